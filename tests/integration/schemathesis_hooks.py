"""Schemathesis hooks for tests/integration/test_ingest_openapi.py (loaded through SCHEMATHESIS_HOOKS).

Two rules of ingest cannot be written in JSON Schema: an event time (the spec's time field) or a
label's `observed_at` may be at most LOOPLINE_MAX_FUTURE_S ahead of ingest's clock (code `future`), and
it must be representable once converted to UTC (0001-01-01T00:00:00+00:01 is not). The schema's
descriptions say so; this hook keeps generated times out of the future and inside the UTC range so that
a request schemathesis considers valid is valid. Only well-formed times change, so negative cases stay
negative.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import schemathesis

TIME_FIELDS = ("ts", "observed_at")


def _past(value):
    if not isinstance(value, str):
        return value
    try:
        when = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        return value
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    now = datetime.now(timezone.utc)
    try:
        when = when.astimezone(timezone.utc)
    except OverflowError:  # beyond year 1..9999 in UTC
        return (now - timedelta(days=1)).isoformat()
    return (now - timedelta(days=1)).isoformat() if when > now else value


def _map(body):
    if isinstance(body, list):
        return [_map(item) for item in body]
    if isinstance(body, dict):
        return {k: _past(v) if k in TIME_FIELDS else v for k, v in body.items()}
    return body


@schemathesis.hook
def map_case(context, case):
    if case.method.upper() == "POST" and case.path in ("/v1/events", "/v1/labels"):
        case.body = _map(case.body)
    return case
