"""Features domain: one event → its point-in-time snapshot; snapshots ⋈ labels → training examples.

Plain functions and small classes over a key-value view of the tables, so the faust agents stay thin
and tests need no broker.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from collections.abc import Iterator
from typing import Any, Protocol

from shared.events import GLOBAL_KEY, SCHEMA_VERSION
from shared.features import KV, FeatureEngine, FeatureStore, StateFormatError
from shared.serialization import dumps, loads, parse_time
from shared.spec import PipelineSpec


class Rejected(ValueError):
    """An input record that cannot be processed; it goes to the dead-letter topic with `code`."""

    def __init__(self, code: str, reason: str):
        self.code = code
        super().__init__(reason)


class LateEvent(Rejected):
    """An event beyond the allowed lateness of its entity."""

    def __init__(self, reason: str):
        super().__init__("late", reason)


@dataclass
class EventOutcome:
    """What processing one `Event` record produced."""

    status: str  # new | duplicate | late
    snapshot: bytes | None  # the FeatureSnapshot record to emit (for a duplicate: the original's)
    reason: str = ""


def entity_key(record: dict[str, Any]) -> str:
    return record["entity"] if record.get("entity") is not None else GLOBAL_KEY


def decode_event(value: bytes | None) -> dict[str, Any]:
    """An `Event` record from the wire, checked for the fields the worker reads (Rejected if not)."""
    try:
        record = loads(value) if value is not None else None
    except ValueError as exc:
        raise Rejected("invalid_json", f"value is not valid JSON: {exc}") from None
    if not isinstance(record, dict):
        raise Rejected("invalid", "an Event record must be a JSON object")
    for name, types in (("event_id", str), ("occurred_at", str), ("data", dict), ("ingested_at", str)):
        if not isinstance(record.get(name), types):
            raise Rejected("invalid", f"'{name}' is missing or has the wrong type")
    if not isinstance(record.get("entity"), (str, type(None))):
        raise Rejected("invalid", "'entity' must be a string or null")
    return record


def process_event(store: FeatureStore, kv: KV, scope: Any, record: dict[str, Any], *, now: float,
                  max_future_s: float, max_bytes: int) -> EventOutcome:
    """Apply one decoded event to its entity's state and build the snapshot record to emit.
    Raises Rejected for an event that cannot be processed (it changes nothing)."""
    engine: FeatureEngine = store.engine
    fields = record["data"]
    try:
        t = engine.event_time(fields)
    except (KeyError, ValueError, TypeError) as exc:
        raise Rejected("invalid", f"event time '{engine.time_field}': {exc!r}") from None
    if not t <= now + max_future_s:  # also NaN: far-future times would make every later event late
        raise Rejected("future", f"event time {record['occurred_at']} is more than {max_future_s:g}s "
                                 f"ahead of the worker's clock")

    def render(features: dict[str, Any]) -> bytes:
        snapshot = dumps({
            "event_id": record["event_id"],
            "type": "snapshot",
            "schema_version": SCHEMA_VERSION,
            "occurred_at": record["occurred_at"],
            "entity": record.get("entity"),
            "feature_hash": engine.feature_hash,
            "features": features,
            "data": fields,
        })
        if len(snapshot) > max_bytes:
            raise Rejected("too_large", f"the snapshot would be {len(snapshot)} bytes; the limit is {max_bytes}")
        return snapshot

    try:
        res = store.process(kv, scope, entity_key(record).encode(), record["event_id"], t, fields, render)
    except StateFormatError as exc:
        raise Rejected("state_error", f"the entity's stored state cannot be read: {exc}") from None
    except (ValueError, TypeError) as exc:
        if isinstance(exc, Rejected):
            raise
        raise Rejected("invalid", str(exc)) from None
    if res.status == "late":
        return EventOutcome("late", None, f"event time {record['occurred_at']} is {res.behind:.3f}s behind the "
                                          f"entity's newest event; allowed lateness is {engine.allowed_lateness:g}s")
    return EventOutcome(res.status, res.record)


# ---------------------------------------------------------------- label join

def decode_join_input(kind: str, value: bytes | None, *, now: float, max_future_s: float) -> dict[str, Any]:
    """A label or a snapshot record for the join, checked for what the join reads (Rejected if not)."""
    try:
        record = loads(value) if value is not None else None
    except ValueError as exc:
        raise Rejected("invalid_json", f"value is not valid JSON: {exc}") from None
    need = (("event_id", str), ("occurred_at", str)) + (
        (("target_event_id", str), ("value", (bool, int, float, str))) if kind == "label"
        else (("features", dict), ("data", dict)))
    if not isinstance(record, dict) or any(not isinstance(record.get(n), t) for n, t in need):
        raise Rejected("invalid", f"not a {kind} record: needs {', '.join(n for n, _ in need)}")
    try:
        t = parse_time(record["occurred_at"]).timestamp()
    except ValueError as exc:
        raise Rejected("invalid", f"occurred_at: {exc}") from None
    if not t <= now + max_future_s:
        raise Rejected("future", f"{'observed_at' if kind == 'label' else 'event time'} {record['occurred_at']} "
                                 f"is more than {max_future_s:g}s ahead of the worker's clock")
    return record


@dataclass
class JoinOutcome:
    status: str  # waiting | joined | duplicate | conflict | late_label | label_before_event
    entry: dict[str, Any] | None  # new join-table entry, None if unchanged
    example: dict[str, Any] | None = None  # TrainingExample record to emit
    reason: str = ""


class LabelJoin:
    """Join snapshots with labels by event id, whichever arrives first, within the label's max delay.

    A join-table entry is {"snapshot", "label", "t": event time (epoch s; the label's observed time
    until the snapshot comes), "wall": when the entry was created (worker clock), "src": where the
    first part came from (topic, partition, offset), "late": a label came too late}. A joined entry
    stays until it expires, so a redelivered snapshot or label re-emits the same example (consumers
    dedup by event_id) and a second, different label is reported, never applied.

    Expiry (see `expiries`). The join's clock is label time: the second-largest `observed_at` of the
    labels seen on the partition (one outlier cannot move it). An entry holding a snapshot expires
    once that clock passes its event time + max_delay + allowed_lateness: every label observed
    within max_delay of its event has arrived by then, however fast history is replayed, as long as
    a partition's labels arrive roughly in observed order. Independently, every entry expires
    `wall_grace` (worker clock) after max_delay has passed since it was created, so a partition that
    never sees a label still forgets. Snapshots and labels that expire unjoined are dead-lettered.
    """

    def __init__(self, spec: PipelineSpec, wall_grace_s: float):
        self.max_delay = spec.label.max_delay.total_seconds()
        self.grace = spec.features.allowed_lateness.total_seconds()
        self.wall_grace = wall_grace_s

    def on_snapshot(self, entry: dict[str, Any] | None, snapshot: dict[str, Any], src: list, now: float
                    ) -> JoinOutcome:
        t = parse_time(snapshot["occurred_at"]).timestamp()
        if entry is None:
            return JoinOutcome("waiting", {"snapshot": snapshot, "label": None, "t": t, "wall": now, "src": src})
        if entry.get("snapshot") is not None:
            return JoinOutcome("duplicate", None, self._example(entry) if entry.get("label") else None)
        return self._complete({**entry, "snapshot": snapshot, "t": t})

    def on_label(self, entry: dict[str, Any] | None, label: dict[str, Any], src: list, now: float) -> JoinOutcome:
        if entry is None:
            t = parse_time(label["occurred_at"]).timestamp()
            return JoinOutcome("waiting", {"snapshot": None, "label": label, "t": t, "wall": now, "src": src})
        if entry.get("label") is not None:
            if entry["label"]["value"] != label["value"]:
                return JoinOutcome("conflict", None, reason=(
                    f"event already labelled {entry['label']['value']!r}; the first label stands"))
            return JoinOutcome("duplicate", None, self._example(entry) if entry.get("snapshot") else None)
        if entry.get("late"):
            return JoinOutcome("late_label", None, reason="a label for this event already came too late")
        return self._complete({**entry, "label": label})

    def _complete(self, entry: dict[str, Any]) -> JoinOutcome:
        snap, label = entry["snapshot"], entry["label"]
        if snap is None or label is None:
            return JoinOutcome("waiting", entry)
        delay = parse_time(label["occurred_at"]).timestamp() - entry["t"]
        if delay < 0:
            return JoinOutcome("label_before_event", {**entry, "label": None}, reason=(
                f"label observed {-delay:.3f}s before its event ({snap['occurred_at']}); observed_at must "
                f"not precede the event"))
        if delay > self.max_delay:
            return JoinOutcome("late_label", {**entry, "label": None, "late": True}, reason=(
                f"label observed {delay:.0f}s after its event; the spec's max delay is {self.max_delay:.0f}s "
                f"(observed_at decides)"))
        return JoinOutcome("joined", entry, self._example(entry))

    @staticmethod
    def _example(entry: dict[str, Any]) -> dict[str, Any]:
        snap, label = entry["snapshot"], entry["label"]
        return {**snap, "type": "training_example", "label": label["value"], "labelled_at": label["occurred_at"]}

    def expiries(self, entry: dict[str, Any] | None) -> tuple[float | None, float | None]:
        """(label-clock expiry, worker-clock expiry) of an entry; the first is None until it has a snapshot."""
        if entry is None:
            return None, None
        wall = entry.get("wall", 0.0) + self.max_delay + self.wall_grace
        if entry.get("snapshot") is None:
            return None, wall
        return entry["t"] + self.max_delay + self.grace, wall

    def expired(self, entry: dict[str, Any]) -> tuple[str, dict[str, Any] | None, str]:
        """(kind, the record to dead-letter or None, reason) for an entry past its expiry.
        kind: joined | late_label | snapshot (never labelled) | label (its event never seen)."""
        if entry.get("snapshot") is not None and entry.get("label") is not None:
            return "joined", None, ""
        if entry.get("late"):
            return "late_label", None, ""
        if entry.get("snapshot") is not None:
            return "snapshot", entry["snapshot"], (
                f"no label observed within the max delay of {self.max_delay:g}s after the event")
        return "label", entry["label"], (
            f"the labelled event was not seen within {self.max_delay + self.wall_grace:g}s of the label")


class LabelClock:
    """The join's clock per partition: the second-largest label time seen (robust to one outlier)."""

    def __init__(self) -> None:
        self._top: dict[int, tuple[float, float]] = {}

    def observe(self, partition: int, t: float) -> None:
        first, second = self._top.get(partition, (float("-inf"), float("-inf")))
        if t > first:
            first, second = t, first
        elif t > second:
            second = t
        self._top[partition] = (first, second)

    def now(self, partition: int) -> float:
        return self._top.get(partition, (float("-inf"), float("-inf")))[1]


# The join table's expiry indexes: keys LABEL_CLOCK or WORKER_CLOCK + expiry time (big-endian
# float64, so RocksDB's byte order is time order for positive epoch times) + the entry's key.
# 0xfd and 0xfe never occur in UTF-8, so index keys never clash with event ids and sort after them.
LABEL_CLOCK = b"\xfe"
WORKER_CLOCK = b"\xfd"
_TIME = struct.Struct(">d")


def expiry_key(index: bytes, at: float, key: bytes) -> bytes:
    return index + _TIME.pack(at) + key


def decode_expiry(index_key: bytes) -> tuple[float, bytes]:
    return _TIME.unpack_from(index_key, 1)[0], index_key[1 + _TIME.size:]


def encode_entry(entry: dict[str, Any]) -> bytes:
    return dumps(entry)


def decode_entry(data: bytes | None) -> dict[str, Any] | None:
    return loads(data) if data else None


class JoinView(KV, Protocol):
    """One partition of the join table: a KV that can also list stored keys in order."""

    def items_from(self, start: bytes) -> Iterator[tuple[bytes, bytes]]: ...


@dataclass
class Expired:
    kind: str  # joined | late_label | snapshot | label
    record: dict[str, Any] | None  # what to dead-letter (None: nothing)
    reason: str
    key: bytes
    src: list  # [topic, partition, offset] the entry's first part came from


class JoinTable:
    """The label join over one partition's view: entries keyed by event id plus both expiry indexes."""

    def __init__(self, joiner: LabelJoin):
        self.joiner = joiner

    def apply(self, view: JoinView, key: bytes, kind: str, record: dict[str, Any], src: list,
              now: float) -> JoinOutcome:
        """A snapshot (kind 'snapshot') or label ('label') for event id `key`."""
        entry = decode_entry(view.get(key))
        on = self.joiner.on_label if kind == "label" else self.joiner.on_snapshot
        res = on(entry, record, src, now)
        if res.entry is not None:
            self._replace(view, key, entry, res.entry)
        return res

    def _replace(self, view: JoinView, key: bytes, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        """Write an entry (None: delete it) and its index keys, in an order whose every prefix is
        harmless after a crash: new index keys, the entry, then the old index keys go. (An index key
        whose entry says otherwise is stale; `sweep` drops it.)"""
        changes = [(index, before, after) for index, before, after in zip(
            (LABEL_CLOCK, WORKER_CLOCK), self.joiner.expiries(old), self.joiner.expiries(new)) if before != after]
        for index, _, after in changes:
            if after is not None:
                view.set(expiry_key(index, after, key), b"")
        if new is not None:
            view.set(key, encode_entry(new))
        else:
            view.delete(key)
        for index, before, _ in changes:
            if before is not None:
                view.delete(expiry_key(index, before, key))

    def sweep(self, view: JoinView, label_now: float, wall_now: float) -> list[Expired]:
        """Remove the entries whose expiry on either clock has passed; return them."""
        out = []
        for index, now, pick in ((LABEL_CLOCK, label_now, 0), (WORKER_CLOCK, wall_now, 1)):
            due = []
            for index_key, _ in view.items_from(index):
                if not index_key.startswith(index):
                    break
                at, key = decode_expiry(index_key)
                if at >= now:
                    break
                due.append((index_key, at, key))
            for index_key, at, key in due:
                entry = decode_entry(view.get(key))
                if entry is None or self.joiner.expiries(entry)[pick] != at:
                    view.delete(index_key)  # stale: the entry changed or went since this key was stored
                    continue
                kind, record, reason = self.joiner.expired(entry)
                self._replace(view, key, entry, None)
                out.append(Expired(kind, record, reason, key, entry.get("src") or ["", -1, -1]))
        return out
