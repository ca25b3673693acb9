"""The compiled fast path of `EventValidator` for raw JSON events (msgspec).

The spec's event schema compiled into a msgspec Struct decodes and validates a JSON record in one C
pass, and an envelope Struct encodes the `Event` record in another: ~1 µs per event instead of ~8 µs
through orjson + pydantic + orjson. It only ever answers for records it can vouch for: anything
invalid or unusual (a number for a category, a timestamp with an offset or without one, an event time
too far ahead, ...) gets None, and the caller takes the full path, which accepts it with the same
result or names the error. `tests/unit/test_event_codec.py` checks that every record this path
accepts is the one the full path builds: the same JSON values of the same types in the same order
(msgspec spells a float's exponent 1e16 where orjson writes 1e+16).
"""
from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from shared.spec import FieldSpec, PipelineSpec

fromisoformat = datetime.fromisoformat
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1  # int64: msgspec bounds must be; the full path takes more
# EventId's rule (shared.events), anchored with \Z: Python's `$` would also match before a final newline.
_EVENT_ID = Annotated[str, Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:\-]+\Z")]
# Timestamps this path takes: RFC 3339 in UTC, the shape both paths read alike (fromisoformat, like the
# full path, truncates digits past the microsecond). Checked after decoding: cheaper than a msgspec pattern.
_UTC_TEXT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,9})?(?:Z|\+00:00)").fullmatch


def _field_type(spec: FieldSpec) -> Any:
    match spec.type:
        case "string":
            return Annotated[str, Meta(max_length=spec.max_length)] if spec.max_length else str
        case "int":  # whole bounds (ge 0.5 on an int is ge 1), within int64 (larger ones take the full path)
            ge = _INT_MIN if spec.min is None else math.ceil(spec.min)
            le = _INT_MAX if spec.max is None else math.floor(spec.max)
            return Annotated[int, Meta(ge=min(max(ge, _INT_MIN), _INT_MAX), le=min(max(le, _INT_MIN), _INT_MAX))]
        case "float":
            return Annotated[float, Meta(ge=spec.min, le=spec.max)]
        case "bool":
            return bool
        case "category":  # numbers sent for values that read as numbers are left to the full path
            return Literal[tuple(spec.values or ())]  # type: ignore[misc]
        case "timestamp":
            return str
    raise ValueError(f"no fast-path type for {spec.type!r}")


class FastEvents:
    """Decode, validate and envelope one raw JSON event, or None when the full path must decide."""

    def __init__(self, spec: PipelineSpec, global_key: str):
        fields: list[Any] = []
        for name, fspec in spec.event.fields.items():
            ftype = _field_type(fspec)
            fields.append((name, ftype) if fspec.required else (name, ftype | None, None))
        if "event_id" not in spec.event.fields:
            fields.append(("event_id", _EVENT_ID | None, None))
        # omit_defaults: an optional field sent as null or left out is not written, as in the full path.
        self.data_type = msgspec.defstruct(f"{spec.event.type}_fast", fields, kw_only=True,
                                           forbid_unknown_fields=True, omit_defaults=True)
        self.envelope_type = msgspec.defstruct("EventFast", [
            ("event_id", str), ("type", str), ("schema_version", int), ("occurred_at", datetime),
            ("entity", str | None), ("ingested_at", datetime), ("source", str), ("data", self.data_type)])
        self._decode = msgspec.json.Decoder(self.data_type).decode
        self._encode = msgspec.json.Encoder().encode
        self.timestamps = tuple(n for n, f in spec.event.fields.items() if f.type == "timestamp")
        self.time_field = spec.event.time_field
        self.entity_key = spec.entity.key if spec.entity else None
        self.type, self.schema_version = spec.event.type, spec.event.schema_version
        self.global_key = global_key.encode()

    def decode(self, raw: bytes, latest: datetime) -> Any | None:
        """The validated event, or None: invalid, not UTC-marked ('Z' or +00:00), or timed after `latest`."""
        try:
            event = self._decode(raw)
        except (msgspec.DecodeError, TypeError):  # TypeError: a value that is not bytes/str
            return None
        for name in self.timestamps:
            text = getattr(event, name)
            if text is not None:
                if not _UTC_TEXT(text):
                    return None
                try:
                    setattr(event, name, fromisoformat(text))
                except ValueError:  # e.g. February 30th
                    return None
        if getattr(event, self.time_field) > latest:
            return None
        return event

    def encode(self, event: Any, event_id: str, *, source: str, ingested_at: datetime) -> tuple[bytes, bytes]:
        """(Kafka key, `Event` record JSON) of a decoded event; its own id wins over `event_id`."""
        own = event.event_id
        if own is not None:
            event_id, event.event_id = own, None  # the id lives in the envelope, not in `data`
        entity = None
        if self.entity_key is not None:
            value = getattr(event, self.entity_key)
            entity = None if value is None else str(value)
        record = self.envelope_type(event_id, self.type, self.schema_version, getattr(event, self.time_field),
                                    entity, ingested_at, source, event)
        return self.global_key if entity is None else entity.encode(), self._encode(record)
