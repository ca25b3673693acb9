"""Labelled `TrainingExample` records for examples/fraud/pipeline.yaml (a library, no I/O): raw events
with their label values turned into the records the label join writes to `training-examples`, with
the features the feature worker computes (the same engine, in arrival order). The tests and the
benchmarks (bench/trainer.py) use it; neither needs a broker to build them."""
from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from shared.events import GLOBAL_KEY, SCHEMA_VERSION, EventValidator
from shared.features import FeatureEngine, FeatureStore
from shared.serialization import dumps, loads
from shared.spec import PipelineSpec, load_spec

SPEC_PATH = Path(__file__).resolve().parent / "pipeline.yaml"
# ingested_at of the Event envelopes built here (it is not part of a TrainingExample; fixed for reruns)
INGESTED_AT = datetime(2026, 11, 26, tzinfo=timezone.utc)


class DictKV(dict):
    """The FeatureStore's key-value store as a dict (a RocksDB partition in the worker)."""

    def set(self, key: bytes, value: bytes) -> None:
        self[key] = value

    def delete(self, key: bytes) -> None:
        self.pop(key, None)


def snapshot(event: dict[str, Any], features: dict[str, Any] | None, spec: PipelineSpec) -> dict[str, Any]:
    """The `FeatureSnapshot` record of an `Event` record, as the feature worker renders it."""
    return {"event_id": event["event_id"], "type": "snapshot", "schema_version": SCHEMA_VERSION,
            "occurred_at": event["occurred_at"], "entity": event["entity"],
            "feature_hash": spec.feature_hash(), "features": features or {}, "data": event["data"]}


def training_examples(spec: PipelineSpec, pairs: Iterable[tuple[dict[str, Any], Any]]) -> list[dict[str, Any]]:
    """`TrainingExample` records for raw events with their label values (None: unlabelled, skipped),
    with the features the feature worker computes (the same engine, in arrival order)."""
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
        out.append({**snapshot(event, loads(processed.record), spec), "type": "training_example",
                    "label": value, "labelled_at": event["occurred_at"]})
    return out


def fraud_training_examples(n: int, *, seed: int = 7, users: int = 300, spec: PipelineSpec | None = None,
                            drift_at: int | None = None) -> list[dict[str, Any]]:
    """n labelled fraud examples from examples/fraud/generate.py (more fraud than the demo's 2 %, so
    a small set still has both classes in every slice); `spec` defaults to the fraud spec."""
    from examples.fraud.generate import GeneratorConfig, generate

    config = GeneratorConfig(seed=seed, users=users, events=int(n * 1.1), fraud_rate=0.08, drift_at=drift_at)
    pairs = [(event, lab["value"] if lab else None) for event, lab in generate(config)]
    return training_examples(spec or load_spec(SPEC_PATH), pairs)[:n]
