"""JSON on the wire: orjson, UTC timestamps, no NaN."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import orjson

_OPTS = orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC


def dumps(value: Any) -> bytes:
    """Serialize to compact JSON bytes (datetimes as RFC 3339 UTC with 'Z')."""
    return orjson.dumps(value, option=_OPTS)


def loads(data: bytes | str) -> Any:
    """Parse JSON; raises orjson.JSONDecodeError (a ValueError) on invalid input, NaN included."""
    return orjson.loads(data)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def to_utc(value: datetime) -> datetime:
    """Naive datetimes are taken as UTC; aware ones are converted to UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def parse_time(value: str) -> datetime:
    """Parse an RFC 3339 / ISO 8601 timestamp into an aware UTC datetime."""
    return to_utc(datetime.fromisoformat(value))
