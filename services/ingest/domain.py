"""Ingest domain logic: decode request bodies and raw records, validate, build what to produce.

Plain functions without I/O, so tests call them directly.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from aiokafka import ConsumerRecord

from shared.errors import ValidationFailed
from shared.events import EventValidator, derived_event_id
from shared.serialization import dumps, loads

Kind = Literal["event", "label"]


@dataclass(frozen=True)
class Limits:
    """Per-record rules both paths (HTTP and the raw bridge) apply after schema validation."""

    max_record_bytes: int = 512 * 1024  # key + value on Kafka; Kafka refuses ~1 MiB per record by default
    max_future: timedelta = timedelta(minutes=5)  # how far an event time may be ahead of our clock


DEFAULT_LIMITS = Limits()


class BadRequest(Exception):
    """The body as a whole cannot be read (maps to 400/413/415, or 422 when it holds no records)."""

    def __init__(self, status: int, reason: str):
        self.status = status
        super().__init__(reason)


@dataclass
class Outgoing:
    """One record to produce: key, serialized value, and the id reported back to the client."""

    key: bytes
    value: bytes
    event_id: str


@dataclass
class Rejection:
    index: int
    field: str
    reason: str
    code: str

    def public(self) -> dict[str, Any]:
        return {"index": self.index, "field": self.field, "reason": self.reason, "code": self.code}


@dataclass
class Checked:
    accepted: list[Outgoing] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)


_NDJSON = ("application/x-ndjson", "application/ndjson", "application/jsonl")
NO_EVENTS = "the body holds no records"


def decode_body(body: bytes, content_type: str, max_items: int) -> list[Any]:
    """JSON object, JSON array or NDJSON into a list of items; an NDJSON line that is not JSON
    becomes a `ValidationFailed` item so the rest of the batch still goes through."""
    media = content_type.split(";")[0].strip().lower()
    if media in ("application/json", "", *_NDJSON) and not body.strip():
        raise BadRequest(422, NO_EVENTS)
    if media in _NDJSON:
        lines = [ln for ln in body.split(b"\n") if ln.strip()]
        if len(lines) > max_items:
            raise BadRequest(413, f"batch has {len(lines)} events; the limit is {max_items}")
        items: list[Any] = []
        for number, line in enumerate(lines, 1):
            try:
                items.append(loads(line))
            except ValueError as exc:
                items.append(ValidationFailed([{"field": "", "code": "invalid_json",
                                                "reason": f"line {number} is not valid JSON: {exc}"}]))
        return items
    if media not in ("application/json", ""):
        raise BadRequest(415, f"unsupported content type '{media}'; use application/json or application/x-ndjson")
    try:
        data = loads(body)
    except ValueError as exc:
        raise BadRequest(400, f"body is not valid JSON (NaN and Infinity are not JSON): {exc}") from None
    items = data if isinstance(data, list) else [data]
    if not items:
        raise BadRequest(422, NO_EVENTS)
    if len(items) > max_items:
        raise BadRequest(413, f"batch has {len(items)} events; the limit is {max_items}")
    return items


def _check(items: list[Any], to_outgoing: Callable[[Any], Outgoing]) -> Checked:
    """Validate each item independently: one bad record never sinks the good ones."""
    out = Checked()
    for index, item in enumerate(items):
        try:
            if isinstance(item, ValidationFailed):
                raise item
            out.accepted.append(to_outgoing(item))
        except ValidationFailed as exc:
            out.rejected.extend(Rejection(index, e["field"], e["reason"], e["code"]) for e in exc.errors)
    return out


def _bounded(out: Outgoing, limit: int) -> Outgoing:
    """Refuse a record Kafka would refuse (or that would fail the whole batch it is sent with)."""
    size = len(out.key) + len(out.value)
    if size > limit:
        raise ValidationFailed([{"field": "", "code": "too_large",
                                 "reason": f"the record would be {size} bytes on Kafka (key + value); "
                                           f"the limit is {limit}"}])
    return out


def to_outgoing(validator: EventValidator, item: Any, kind: Kind, *, source: str, now: datetime,
                limits: Limits = DEFAULT_LIMITS, event_id: str | None = None) -> Outgoing:
    """One event (spec fields, optional event_id) or label (LabelIn) as the record to produce;
    ValidationFailed if it breaks the spec or the limits. Every path in (HTTP, raw topics, replay)
    goes through here. `event_id` is used for an event sent without one (default: a new id)."""
    if kind == "label":
        record = validator.label(item, source=source, now=now)
        key = record["target_event_id"].encode()
    else:
        record = validator.envelope(validator.validate(item), source=source, ingested_at=now, event_id=event_id)
        key = validator.kafka_key(record)
    validator.check_not_future(record, now=now, max_ahead=limits.max_future)
    return _bounded(Outgoing(key, dumps(record), record["event_id"]), limits.max_record_bytes)


def check_events(validator: EventValidator, items: list[Any], *, source: str, now: datetime,
                 limits: Limits = DEFAULT_LIMITS) -> Checked:
    """Good items become `Event` records keyed by entity (GLOBAL_KEY without entities)."""
    return _check(items, lambda item: to_outgoing(validator, item, "event", source=source, now=now, limits=limits))


def check_labels(validator: EventValidator, items: list[Any], *, source: str, now: datetime,
                 limits: Limits = DEFAULT_LIMITS) -> Checked:
    """Good items become `Label` records keyed by the event id they refer to."""
    return _check(items, lambda item: to_outgoing(validator, item, "label", source=source, now=now, limits=limits))


@dataclass
class RawOutcome:
    """What a raw-topic record turns into: a record for events/labels, or a dead letter."""

    record: ConsumerRecord
    kind: Kind
    outgoing: Outgoing | None = None
    error: ValidationFailed | None = None


def check_raw(validator: EventValidator, record: ConsumerRecord, kind: Kind, now: datetime,
              limits: Limits = DEFAULT_LIMITS) -> RawOutcome:
    """Validate one record a producer wrote to events.raw or labels.raw; the same rules as HTTP."""
    try:
        try:
            item = loads(record.value) if record.value is not None else None
        except ValueError as exc:
            raise ValidationFailed([{"field": "", "code": "invalid_json",
                                     "reason": f"value is not valid JSON: {exc}"}]) from None
        out = to_outgoing(validator, item, kind, source="kafka", now=now, limits=limits,
                          event_id=derived_event_id(record.topic, record.partition, record.offset))
    except ValidationFailed as exc:
        return RawOutcome(record, kind, error=exc)
    return RawOutcome(record, kind, outgoing=out)


@dataclass
class RawBatch:
    """A fetched batch checked in order: what to produce per kind, and the records to dead-letter."""

    accepted: dict[Kind, list[tuple[bytes, bytes]]]  # (key, value) in the order the records came
    rejected: list[RawOutcome]


def check_raw_batch(validator: EventValidator, records: list[ConsumerRecord], kinds: dict[str, Kind],
                    now: datetime, limits: Limits = DEFAULT_LIMITS) -> RawBatch:
    """`check_raw` over a batch (`kinds` maps each raw topic to its kind). An event the validator's
    compiled fast path vouches for takes ~1/5 of the full path's time and yields the same record
    (tests/unit/test_event_codec.py); the rest goes through `check_raw`."""
    fast, latest, limit = validator.fast, now + limits.max_future, limits.max_record_bytes
    accepted: dict[Kind, list[tuple[bytes, bytes]]] = {"event": [], "label": []}
    rejected: list[RawOutcome] = []
    for record in records:
        kind = kinds[record.topic]
        if kind == "event" and type(record.value) is bytes and (event := fast.decode(record.value, latest)):
            default_id = "" if event.event_id else derived_event_id(record.topic, record.partition, record.offset)
            key, value = fast.encode(event, default_id, source="kafka", ingested_at=now)
            if len(key) + len(value) <= limit:
                accepted[kind].append((key, value))
                continue
        outcome = check_raw(validator, record, kind, now, limits)
        if outcome.outgoing is not None:
            accepted[kind].append((outcome.outgoing.key, outcome.outgoing.value))
        else:
            rejected.append(outcome)
    return RawBatch(accepted, rejected)
