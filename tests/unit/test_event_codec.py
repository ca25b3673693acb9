"""The compiled fast path (shared.event_codec) against the full path (orjson + pydantic + orjson):
whatever it accepts must be the record the full path builds (the same JSON values of the same types in
the same order; only a float's exponent may be spelled 1e16 rather than 1e+16); everything else is left
to the full path. Checked on hand-picked traps and on generated records for two specs."""
import json
from datetime import datetime, timedelta, timezone

import orjson
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from bench.common import fraud_events
from shared.errors import ValidationFailed
from shared.events import EventValidator
from shared.serialization import dumps, loads
from shared.spec import parse_spec
from tests.data import FRAUD_TEXT, VALIDATOR as FRAUD_V

NOW = datetime(2026, 12, 3, 3, 0, 0, 123456, tzinfo=timezone.utc)
AHEAD = timedelta(minutes=5)

# A global stream (no entity) with every field type, optional fields, fractional int bounds, an
# unbounded float and category values that read as numbers.
WIDE = EventValidator(parse_spec("""
name: wide
event:
  type: reading
  time_field: at
  fields:
    at: {type: timestamp}
    seen: {type: timestamp, required: false}
    n: {type: int, min: -2.5, max: 1000.5}
    big: {type: int, required: false}
    x: {type: float, required: false}
    flag: {type: bool, required: false}
    level: {type: category, values: [1, 2, 3.5, low]}
    note: {type: string, required: false, max_length: 5}
label: {name: y, type: regression, max_delay: 1h}
features:
  definitions:
    - {name: n_count, agg: count, window: 1h}
models:
  - {name: lin, library: river, algorithm: linear_regression}
metrics: {primary: mae, minimum: 100}
"""))


def full_path(v: EventValidator, raw: bytes) -> tuple[bytes, bytes] | None:
    """What the bridge's full path produces for a raw record (None: it refuses it)."""
    try:
        record = v.envelope(v.validate(loads(raw)), source="kafka", ingested_at=NOW, event_id="derived-1")
        v.check_not_future(record, now=NOW, max_ahead=AHEAD)
    except (ValueError, ValidationFailed):
        return None
    return v.kafka_key(record), dumps(record)


def fast_path(v: EventValidator, raw: bytes) -> tuple[bytes, bytes] | None:
    event = v.fast.decode(raw, NOW + AHEAD)
    if event is None:
        return None
    return v.fast.encode(event, "derived-1", source="kafka", ingested_at=NOW)


def agree(v: EventValidator, raw: bytes) -> bool:
    """The fast path's answer, after checking it is the full path's; False when it declined."""
    fast, full = fast_path(v, raw), full_path(v, raw)
    if fast is not None:
        assert full is not None, raw
        assert fast[0] == full[0], raw
        assert orjson.dumps(loads(fast[1])) == orjson.dumps(loads(full[1])), raw  # int stays int, 1.0 float
    return fast is not None


GOOD = {"user_id": "u1", "amount": 26.88, "merchant_category": "pharmacy", "country": "FR", "channel": "web",
        "ts": "2026-01-01T00:00:00.664Z"}


def with_(**change) -> bytes:
    event = {k: v for k, v in {**GOOD, **change}.items() if v is not ...}
    return orjson.dumps(event)


TRAPS = [
    with_(event_id="abc\n"), with_(event_id=""), with_(event_id="a" * 129), with_(event_id="a b"),
    with_(amount=True), with_(amount="5"), with_(amount=50000.0001), with_(amount=None), with_(amount=...),
    with_(user_id="😀" * 65), with_(country=1), with_(channel="POS"),
    with_(extra=1), with_(ts="2026-01-01T00:00:00.1234567890Z"), with_(ts="2026-01-01T00:00:00.Z"),
    with_(ts="20260101T000000Z"), with_(ts="2026-W01-1T00:00:00Z"), with_(ts="2026-01-01T24:00:00Z"),
    with_(ts="2026-01-01t00:00:00z"), with_(ts="2026-01-01 00:00:00Z"), with_(ts="2026-01-01T00:00Z"),
    with_(ts="2026-01-01T00:00:00+02:00"), with_(ts="2026-01-01T00:00:00-00:00"), with_(ts="2026-01-01T00:00:00"),
    with_(ts="2026-01-01T23:59:60Z"), with_(ts="2026-02-30T00:00:00Z"), with_(ts="9999-12-31T23:59:59Z"),
    with_(ts="2026-12-03T03:05:00.123457Z"), with_(ts=1700000000), with_(ts="2026-01-01"),
    with_(ts="2026-01-01T00:00:00,5Z"),
    b'{"user_id":"\\ud800","amount":1,"merchant_category":"fuel","country":"DE","channel":"pos","ts":"2026-01-01T00:00:00Z"}',
    b'{"user_id":"u\xff","amount":1,"merchant_category":"fuel","country":"DE","channel":"pos","ts":"2026-01-01T00:00:00Z"}',
    b'{"user_id":"u1","amount":1e999,"merchant_category":"fuel","country":"DE","channel":"pos","ts":"2026-01-01T00:00:00Z"}',
    b'{"user_id":"u1","amount":NaN,"merchant_category":"fuel","country":"DE","channel":"pos","ts":"2026-01-01T00:00:00Z"}',
    b'{"user_id":"u1","amount":1,"merchant_category":"fuel","country":"DE","channel":"pos","ts":"2026-01-01T00:00:00Z"} x',
    b'\xef\xbb\xbf{"user_id":"u1","amount":1,"merchant_category":"fuel","country":"DE","channel":"pos","ts":"2026-01-01T00:00:00Z"}',
    b"[]", b"null", b"", b"{}", b"[{}]",
]
SAME = [
    orjson.dumps(GOOD), with_(event_id="abc:1.2-x"), with_(event_id=None), with_(amount=5), with_(amount=-0.0),
    with_(amount=50000), with_(amount=1e-320), with_(user_id="é" * 64), with_(user_id="😀" * 64), with_(user_id=""),
    with_(user_id="\u0000\u001f\"\\/\u2028"), with_(ts="2026-01-01T00:00:00Z"), with_(ts="2026-01-01T00:00:00+00:00"),
    with_(ts="2026-12-03T03:05:00.123456Z"), with_(ts="0001-01-01T00:00:00Z"), with_(ts="2026-01-01T00:00:00.000Z"),
    with_(ts="2026-01-01T00:00:00.1234567Z"), with_(ts="2026-01-01T00:00:00.999999999Z"),  # both truncate
    b'{"user_id":"u1","user_id":"u2","amount":1,"merchant_category":"fuel","country":"DE","channel":"pos","ts":"2026-01-01T00:00:00Z"}',
    b' {"amount":1.0E2,"merchant_category":"fuel","country":"DE","channel":"pos","ts":"2026-01-01T00:00:00Z","user_id":"u1"}\n',
]


@pytest.mark.parametrize("raw", TRAPS + SAME)
def test_what_the_fast_path_accepts_is_what_the_full_path_builds(raw):
    accepted = agree(FRAUD_V, raw)
    assert accepted == (raw in SAME)  # the traps are left to the full path; the rest is taken


def test_the_fast_path_takes_every_generated_fraud_event():
    events = fraud_events(500)
    assert all(agree(FRAUD_V, orjson.dumps(e)) for e in events)


def test_numbers_for_categories_that_read_as_numbers_go_to_the_full_path_and_still_pass():
    v = EventValidator(parse_spec(FRAUD_TEXT.replace("values: [pos, web, app]", "values: [1, 2]")))
    assert not agree(v, with_(channel=1)) and full_path(v, with_(channel=1)) is not None
    assert agree(v, with_(channel="1"))


# ---------------------------------------------------------------- generated records

_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-3, max_value=1002), st.integers(),
    st.floats(allow_nan=False, allow_infinity=False), st.floats(min_value=-3, max_value=1002),
    st.sampled_from(["1", "2", "3.5", "low", "LOW", "1.0", 1.0, 3.5, 2, "", "abcde", "abcdef", "é😀",
                     "2026-12-03T02:00:00Z", "2026-12-03T02:00:00.5+00:00", "2026-12-03T02:00:00",
                     "2026-12-03T04:00:00Z", "2026-12-03T02:00:00.1234567Z", "2026-12-03 02:00:00Z",
                     "2026-12-03T02:00:00.Z", "2026-12-03T02:00:60Z", "2026-12-03T02:00:00,5Z"]),
    st.text(max_size=8),
)
_KEYS = st.sampled_from(["at", "seen", "n", "big", "x", "flag", "level", "note", "event_id", "other"])
_WIDE_GOOD = {"at": "2026-12-03T02:00:00Z", "n": 3, "level": "low"}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(_KEYS, _VALUES, max_size=6), st.sets(st.sampled_from(list(_WIDE_GOOD))))
def test_generated_records_agree(change, dropped):
    event = {k: v for k, v in {**_WIDE_GOOD, **change}.items() if k not in dropped}
    agree(WIDE, json.dumps(event, ensure_ascii=False).encode())  # json: integers past 64 bits too


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=60) | st.text(max_size=60).map(str.encode))
def test_arbitrary_bytes_never_pass_the_fast_path_alone(raw):
    agree(WIDE, raw)


@pytest.mark.parametrize("raw", [b'{"at":"2026-12-03T02:00:00Z","n":3,"level":"low","x":1e999}',
                                 b'{"at":"2026-12-03T02:00:00Z","n":3,"level":"low","x":-1e400}',
                                 b'{"at":"2026-12-03T02:00:00Z","n":3,"level":"low","big":18446744073709551616}',
                                 b'{"at":"2026-12-03T02:00:00Z","n":3,"level":"low","big":-9223372036854775809}',
                                 b'{"at":"2026-12-03T02:00:00Z","n":3,"level":"low","big":1.0}',
                                 b'{"at":"2026-12-03T02:00:00Z","n":-3,"level":"low"}',
                                 b'{"at":"2026-12-03T02:00:00Z","n":1001,"level":"low"}',
                                 b'{"at":"2026-12-03T02:00:00Z","n":3,"level":2.0}',
                                 b'{"at":"2026-12-03T02:00:00Z","n":3,"level":"low","seen":"2026-12-03T02:00:00"}',
                                 b'{"at":"2026-12-03T02:00:00Z","n":3,"level":"low","note":"abcdef"}'])
def test_wide_traps_are_left_to_the_full_path(raw):
    assert not agree(WIDE, raw)


def test_the_wide_spec_is_taken_when_canonical():
    assert agree(WIDE, orjson.dumps({**_WIDE_GOOD, "seen": None, "x": 1, "flag": True, "level": "3.5",
                                     "note": "abc", "big": 2**63 - 1, "event_id": "r-1"}))
    assert agree(WIDE, orjson.dumps({**_WIDE_GOOD, "n": -2, "big": -(2**63), "x": -1e300}))
