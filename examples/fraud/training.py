"""Labelled fraud training examples made with the real feature engine: the `TrainingExample` records the
feature worker would emit for examples/fraud/generate.py's events (for tests and benchmarks).

Pure data: no broker, no processes.
"""
from __future__ import annotations

import functools
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shared.events import GLOBAL_KEY, SCHEMA_VERSION, EventValidator
from shared.serialization import dumps, loads
from shared.spec import PipelineSpec, load_spec

SPEC_PATH = Path(__file__).resolve().parent / "pipeline.yaml"
# ingested_at of the Event records built here (it is not part of a training example)
INGESTED_AT = datetime(2026, 11, 26, tzinfo=UTC)


@functools.cache
def fraud_spec() -> PipelineSpec:
    """examples/fraud/pipeline.yaml, loaded once."""
    return load_spec(SPEC_PATH)


class DictKV(dict):
    """The FeatureStore's key-value store as a dict (a RocksDB partition in the worker)."""

    def set(self, key: bytes, value: bytes) -> None:
        self[key] = value

    def delete(self, key: bytes) -> None:
        self.pop(key, None)


def snapshot_record(event: dict[str, Any], features: dict[str, Any], spec: PipelineSpec) -> dict[str, Any]:
    """The `FeatureSnapshot` record of an `Event` record, as the feature worker renders it."""
    return {"event_id": event["event_id"], "type": "snapshot", "schema_version": SCHEMA_VERSION,
            "occurred_at": event["occurred_at"], "entity": event["entity"],
            "feature_hash": spec.feature_hash(), "features": features, "data": event["data"]}


def training_examples(spec: PipelineSpec, pairs: Iterable[tuple[dict[str, Any], Any]]) -> list[dict[str, Any]]:
    """`TrainingExample` records for raw events with their label values (None: unlabelled, skipped),
    with the features the feature worker computes (the same engine, in arrival order)."""
    from shared.features import FeatureEngine, FeatureStore

    validator = EventValidator(spec)
    engine = FeatureEngine(spec)
    store, kv = FeatureStore(engine), DictKV()
    out = []
    for raw, value in pairs:
        event = validator.envelope(validator.validate(raw), source="http", ingested_at=INGESTED_AT)
        fields = event["data"]
        entity = (engine.entity_of(fields) or GLOBAL_KEY).encode()
        processed = store.process(kv, 0, entity, event["event_id"], engine.event_time(fields), fields,
                                  lambda features: dumps(features))
        if value is None or processed.status != "new":
            continue
        out.append({**snapshot_record(event, loads(processed.record), spec), "type": "training_example",
                    "label": value, "labelled_at": event["occurred_at"]})
    return out


def fraud_training_examples(n: int, *, seed: int = 7, users: int = 300, spec: PipelineSpec | None = None,
                            drift_at: int | None = None) -> list[dict[str, Any]]:
    """n labelled fraud examples from examples/fraud/generate.py (more fraud than the demo's 2 %, so
    a small set still has both classes in every slice); `spec` defaults to the fraud spec."""
    from examples.fraud.generate import GeneratorConfig, generate

    config = GeneratorConfig(seed=seed, users=users, events=int(n * 1.1), fraud_rate=0.08, drift_at=drift_at)
    pairs = [(event, lab["value"] if lab else None) for event, lab in generate(config)]
    return training_examples(spec or fraud_spec(), pairs)[:n]
