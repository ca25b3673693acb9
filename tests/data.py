"""Test data shared by every test: the fraud spec and its variants, one raw-event factory, the records
ingest and the feature worker put on the wire, and `wire`, the contract check for what a service emitted.

Pure data: no broker, no processes (tests/support.py has those).
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from examples.fraud import training as fraud_training
# TrainingExample records are built by examples/fraud/training.py (the benchmarks use it too)
from examples.fraud.training import DictKV, fraud_training_examples, training_examples  # noqa: F401
from shared.events import GLOBAL_KEY, EventValidator, Label, Wire, label_id
from shared.serialization import dumps, loads
from shared.spec import PipelineSpec, load_spec

ROOT = Path(__file__).resolve().parent.parent
FRAUD_PATH = ROOT / "examples" / "fraud" / "pipeline.yaml"
FRAUD_TEXT = FRAUD_PATH.read_text()
FRAUD: PipelineSpec = load_spec(FRAUD_PATH)  # max_delay 7 d, allowed lateness 5 min, entity user_id
VALIDATOR = EventValidator(FRAUD)
# ingested_at of the records built here; also the raw events' default day
NOW = datetime(2026, 11, 26, tzinfo=timezone.utc)


def _edit(text: str, old: str, new: str) -> str:
    assert old in text, f"the fraud spec no longer contains {old!r}"
    return text.replace(old, new, 1)


def fraud_text(*, entity: bool = True, label: str = "binary", classes: str | None = None,
               user_max_length: int | None = 64) -> str:
    """The fraud spec's YAML for another problem type: without `entity` one global stream; a
    `multiclass` or `regression` label (metrics and models to match); label `classes` as YAML text,
    e.g. "[0, 1, 2]"; `user_max_length` None leaves the entity key unbounded."""
    text = FRAUD_TEXT
    if not entity:
        text = _edit(text, "entity:\n  key: user_id\n", "")
    if user_max_length != 64:
        bound = "" if user_max_length is None else f", max_length: {user_max_length}"
        text = _edit(text, "user_id: {type: string, max_length: 64}", f"user_id: {{type: string{bound}}}")
    if label != "binary":
        primary = {"multiclass": "accuracy", "regression": "mae"}[label]
        text = _edit(text, "primary: roc_auc", f"primary: {primary}")
        text = _edit(text, "report: [pr_auc, log_loss, recall, precision]", "report: []")
        river = {"multiclass": "hoeffding_tree", "regression": "linear_regression"}[label]
        text = _edit(text, "algorithm: logistic_regression}", f"algorithm: {river}}}")  # the river model
    if label == "regression":
        text = _edit(text, "algorithm: logistic_regression, params: {C: 1.0, max_iter: 500}",
                     "algorithm: ridge, params: {}")
    return _edit(text, "type: binary", f"type: {label}" + (f"\n  classes: {classes}" if classes else ""))


# ---------------------------------------------------------------- raw events (what clients send)

def iso(t: datetime | float) -> str:
    """RFC 3339 UTC text ('Z') of a datetime or of epoch seconds."""
    if not isinstance(t, datetime):
        t = datetime.fromtimestamp(t, tz=timezone.utc)
    return t.isoformat().replace("+00:00", "Z")


START = datetime(2026, 11, 26, 10, tzinfo=timezone.utc)
TXN = {"user_id": "u1", "amount": 12.5, "merchant_category": "fuel", "country": "DE", "channel": "web",
       "ts": iso(START)}


def txn(i: int | None = None, /, *, prefix: str = "ev-", **fields: Any) -> dict[str, Any]:
    """A valid raw fraud event: TXN without an event_id, or the i-th of a series (event_id
    f"{prefix}{i}", user u{i % 7}, amount 10 + i/2, ts i seconds after 2026-11-26T10:00:00Z).
    `fields` override; a datetime or epoch-seconds `ts` becomes text; a field given None is left out."""
    base: dict[str, Any] = dict(TXN)
    if i is not None:
        base = {"event_id": f"{prefix}{i}", **base, "user_id": f"u{i % 7}", "amount": round(10 + i * 0.5, 2),
                "ts": iso(START + timedelta(seconds=i))}
    base.update(fields)
    if not isinstance(base["ts"], str):
        base["ts"] = iso(base["ts"])
    return {k: v for k, v in base.items() if v is not None}


# ---------------------------------------------------------------- records on the wire

def envelope(raw: dict[str, Any], validator: EventValidator = VALIDATOR, *, event_id: str | None = None,
             source: str = "http", at: datetime = NOW) -> dict[str, Any]:
    """The `Event` record ingest publishes for a raw event (the raw event_id wins over `event_id`)."""
    return validator.envelope(validator.validate(raw), source=source, ingested_at=at, event_id=event_id)


def label(event_id: str, value: bool | int | float | str = True, observed: datetime | str | None = None, *,
          source: str = "http", at: datetime = NOW) -> dict[str, Any]:
    """The `Label` record ingest publishes for an outcome observed at `observed` (default: `at`)."""
    return Label(event_id=label_id(event_id), occurred_at=observed or at, target_event_id=event_id,
                 value=value, ingested_at=at, source=source).model_dump(mode="json")  # type: ignore[arg-type]


def snapshot(event: dict[str, Any], features: dict[str, Any] | None = None,
             spec: PipelineSpec = FRAUD) -> dict[str, Any]:
    """The `FeatureSnapshot` record of an `Event` record, as the feature worker renders it."""
    return fraud_training.snapshot(event, features, spec)


def keyed(record: dict[str, Any]) -> tuple[bytes, bytes]:
    """(Kafka key, value) of a record: a label by its event's id, an event by its entity."""
    key = record["target_event_id"] if record["type"] == "label" else record["entity"]
    if key is None:
        key = GLOBAL_KEY
    return key.encode(), dumps(record)


def wire(value: bytes | None, model: type[Wire]) -> dict[str, Any]:
    """A record a service emitted, checked against its wire model (`Event`, `Label`, `FeatureSnapshot`,
    `TrainingExample`), as the plain dict its JSON holds.

    Strict: the models alone are lax (they take "1" or true for a number, a Unix number for a time);
    a service must emit the documented types."""
    assert value is not None, f"a tombstone where a {model.__name__} record belongs"
    model.model_validate_json(value, strict=True)
    return loads(value)


# ---------------------------------------------------------------- key-value stores

class JoinKV(DictKV):
    """One partition of the label-join table: a DictKV that lists its keys in order from `start`."""

    def items_from(self, start: bytes):
        return iter(sorted((k, v) for k, v in self.items() if k >= start))

