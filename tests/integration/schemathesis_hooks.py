"""Schemathesis hooks for tests/integration/test_openapi.py (loaded through SCHEMATHESIS_HOOKS).

Times. Two rules of an event cannot be written in JSON Schema: its time (the spec's time field) or a
label's `observed_at` may be at most LOOPLINE_MAX_FUTURE_S ahead of the service's clock (code `future`),
and it must be representable once converted to UTC (0001-01-01T00:00:00+00:01 is not). Ingest's schema
descriptions say so. This hook keeps generated times out of the future and inside the UTC range, for
ingest's /v1/events and /v1/labels and serving's /v1/predict and /v1/predict/batch, so that a request
schemathesis considers valid is valid and the fuzzer reaches the publishing and scoring paths. Only
well-formed times change, so negative cases stay negative.

Registry versions. The trainer's /v1/models/{name}/{version}... routes answer 404 for the versions a
fuzzer invents. LOOPLINE_FUZZ_VERSIONS ("lr:1,lr:2") names versions the test put in the registry; about
half of the positive cases are pointed at one of them (chosen from the generated values, so a case
maps the same way every time), so that promote, stage and rollback run for real.

Authentication. With LOOPLINE_FUZZ_UNAUTHENTICATED=1 (a run without the API key), the check
`unauthenticated_is_refused` requires 401 or 403 from every operation whose OpenAPI declares security.
"""
from __future__ import annotations

import os
import zlib
from datetime import datetime, timedelta, timezone

import schemathesis
from schemathesis.core.parameters import ParameterLocation

TIME_FIELDS = ("ts", "observed_at")
TIMED_ROUTES = ("/v1/events", "/v1/labels", "/v1/predict", "/v1/predict/batch")
VERSIONS = [(name, int(version)) for name, _, version in
            (item.partition(":") for item in os.environ.get("LOOPLINE_FUZZ_VERSIONS", "").split(",") if item)]
UNAUTHENTICATED = os.environ.get("LOOPLINE_FUZZ_UNAUTHENTICATED") == "1"


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


def _negative_path(case) -> bool:
    return case.meta is not None and case.meta.is_negative_at(ParameterLocation.PATH)


@schemathesis.hook
def map_case(context, case):
    if case.method.upper() == "POST" and case.path in TIMED_ROUTES:
        case.body = _map(case.body)
    params = case.path_parameters
    if VERSIONS and params and {"name", "version"} <= params.keys() and not _negative_path(case):
        pick = zlib.crc32(repr(sorted(params.items())).encode())
        if pick % 2 == 0:
            name, version = VERSIONS[(pick // 2) % len(VERSIONS)]
            case.path_parameters = {**params, "name": name, "version": version}
    return case


@schemathesis.check
def unauthenticated_is_refused(ctx, response, case):
    """Without the API key, an operation that declares security answers 401 or 403 (never 2xx or 5xx)."""
    if not UNAUTHENTICATED or not list(case.operation.security.iter_parameters()):
        return None
    if case.method.upper() != case.operation.method.upper():  # unsupported_method probes: 405 is right
        return None
    if response.status_code not in (401, 403):
        raise AssertionError(f"{case.method} {case.formatted_path} without an API key answered "
                             f"{response.status_code}, not 401 or 403")
    return None
