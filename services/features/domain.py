"""Features domain: one event → its point-in-time snapshot; snapshots ⋈ labels → training examples.

Plain functions over bytes-in/bytes-out state so the faust agents stay thin and tests need no broker.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from shared.events import GLOBAL_KEY, SCHEMA_VERSION
from shared.features import FeatureEngine
from shared.serialization import dumps, loads, parse_time
from shared.spec import PipelineSpec


@dataclass
class EventOutcome:
    """What processing one `Event` record produced."""

    status: str  # new | duplicate | late | unknowable (a duplicate whose snapshot was evicted)
    state: bytes | None  # new state to store, None if unchanged
    snapshot: dict[str, Any] | None  # FeatureSnapshot record to emit
    reason: str = ""


def entity_key(record: dict[str, Any]) -> str:
    return record["entity"] if record.get("entity") is not None else GLOBAL_KEY


def process_event(engine: FeatureEngine, state_bytes: bytes | None, record: dict[str, Any]) -> EventOutcome:
    """Apply one validated event to its entity's state and build the snapshot to emit."""
    state = engine.load(state_bytes)
    fields = record["data"]
    t = engine.event_time(fields)
    applied = engine.apply(state, record["event_id"], t, fields)
    if applied.status == "late":
        lateness = state.max_t - t
        return EventOutcome("late", None, None,
                            f"event time {record['occurred_at']} is {lateness:.3f}s behind the entity's newest "
                            f"event; allowed lateness is {engine.allowed_lateness:g}s")
    if applied.features is None:  # duplicate whose original snapshot can no longer be rebuilt
        return EventOutcome("unknowable", None, None)
    snapshot = {
        "event_id": record["event_id"],
        "type": "snapshot",
        "schema_version": SCHEMA_VERSION,
        "occurred_at": record["occurred_at"],
        "entity": record.get("entity"),
        "feature_hash": engine.feature_hash,
        "features": applied.features,
        "data": fields,
    }
    new_state = engine.dump(state) if applied.status == "new" else None
    return EventOutcome(applied.status, new_state, snapshot)


# ---------------------------------------------------------------- label join

@dataclass
class JoinOutcome:
    status: str  # waiting | joined | duplicate | conflict | late_label
    entry: dict[str, Any] | None  # new join-table entry, None if unchanged
    example: dict[str, Any] | None = None  # TrainingExample record to emit
    reason: str = ""


class LabelJoin:
    """Join snapshots with labels by event id, whichever arrives first, within the label's max delay.

    A join-table entry is {"snapshot": ..., "label": ..., "t": event time (epoch s)}. A joined
    entry stays until it expires, so a redelivered snapshot or label re-emits the same example
    (consumers dedup by event_id) and a second, different label is reported, never applied.
    """

    def __init__(self, spec: PipelineSpec):
        self.max_delay = spec.label.max_delay.total_seconds()

    def on_snapshot(self, entry: dict[str, Any] | None, snapshot: dict[str, Any]) -> JoinOutcome:
        t = parse_time(snapshot["occurred_at"]).timestamp()
        if entry is None:
            return JoinOutcome("waiting", {"snapshot": snapshot, "label": None, "t": t})
        if entry.get("snapshot") is not None:
            return JoinOutcome("duplicate", None, self._example(entry) if entry.get("label") else None)
        entry = {**entry, "snapshot": snapshot, "t": t}
        return self._complete(entry)

    def on_label(self, entry: dict[str, Any] | None, label: dict[str, Any]) -> JoinOutcome:
        if entry is None:
            t = parse_time(label["occurred_at"]).timestamp()  # until the snapshot comes, expire by label time
            return JoinOutcome("waiting", {"snapshot": None, "label": label, "t": t})
        if entry.get("label") is not None:
            if entry["label"]["value"] != label["value"]:
                return JoinOutcome("conflict", None, reason=(
                    f"event already labelled {entry['label']['value']!r}; the first label stands"))
            return JoinOutcome("duplicate", None, self._example(entry) if entry.get("snapshot") else None)
        return self._complete({**entry, "label": label})

    def _complete(self, entry: dict[str, Any]) -> JoinOutcome:
        snap, label = entry["snapshot"], entry["label"]
        if snap is None or label is None:
            return JoinOutcome("waiting", entry)
        delay = parse_time(label["occurred_at"]).timestamp() - entry["t"]
        if delay > self.max_delay:
            return JoinOutcome("late_label", {**entry, "label": None}, reason=(
                f"label observed {delay:.0f}s after its event; the spec's max delay is {self.max_delay:.0f}s"))
        return JoinOutcome("joined", entry, self._example(entry))

    @staticmethod
    def _example(entry: dict[str, Any]) -> dict[str, Any]:
        snap, label = entry["snapshot"], entry["label"]
        return {**snap, "type": "training_example", "label": label["value"], "labelled_at": label["occurred_at"]}

    def expired(self, entry: dict[str, Any], stream_time: float) -> str | None:
        """'snapshot' (never labelled), 'label' (its event never seen) or 'joined' once past the delay."""
        if entry["t"] + self.max_delay >= stream_time:
            return None
        if entry.get("snapshot") is not None and entry.get("label") is not None:
            return "joined"
        return "snapshot" if entry.get("snapshot") is not None else "label"


# The join table's expiry index: keys EXPIRY + expiry time (big-endian float64, so RocksDB's byte
# order is time order for the positive epoch times) + the entry's key. 0xfe never occurs in UTF-8,
# so index keys never clash with event ids and sort after all of them.
EXPIRY = b"\xfe"
_TIME = struct.Struct(">d")


def expiry_key(at: float, key: bytes) -> bytes:
    return EXPIRY + _TIME.pack(at) + key


def decode_expiry(index_key: bytes) -> tuple[float, bytes]:
    return _TIME.unpack_from(index_key, 1)[0], index_key[1 + _TIME.size:]


def encode_entry(entry: dict[str, Any]) -> bytes:
    return dumps(entry)


def decode_entry(data: bytes | None) -> dict[str, Any] | None:
    return loads(data) if data else None
