"""Ingest's pure logic: body decoding and batch checks."""
from datetime import datetime, timedelta, timezone

import pytest
from aiokafka import ConsumerRecord

from services.ingest.domain import (
    NO_EVENTS, BadRequest, Limits, check_events, check_labels, check_raw, check_raw_batch, decode_body,
)
from shared.events import Event, EventValidator, derived_event_id
from shared.serialization import dumps
from shared.spec import parse_spec
from tests.data import TXN as GOOD, VALIDATOR as V, fraud_text, wire

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=timezone.utc)


def test_decode_object_array_and_ndjson():
    assert decode_body(dumps(GOOD), "application/json", 10) == [GOOD]
    assert decode_body(dumps([GOOD, GOOD]), "application/json; charset=utf-8", 10) == [GOOD, GOOD]
    items = decode_body(dumps(GOOD) + b"\n\n{bad\n" + dumps(GOOD) + b"\n", "application/x-ndjson", 10)
    assert items[0] == GOOD and items[2] == GOOD
    assert "line 2 is not valid JSON" in str(items[1])


@pytest.mark.parametrize("body, ctype, status", [
    (b"{", "application/json", 400),
    (b'{"amount": NaN}', "application/json", 400),
    (b"[]", "application/json", 422),
    (b"", "application/json", 422),
    (b"  \n", "", 422),
    (b"\n\n", "application/x-ndjson", 422),
    (b"", "application/x-ndjson", 422),
    (b"a,b", "text/csv", 415),
    (dumps([GOOD] * 11), "application/json", 413),
    (b"\n".join([dumps(GOOD)] * 11), "application/x-ndjson", 413),
])
def test_bad_bodies(body, ctype, status):
    with pytest.raises(BadRequest) as err:
        decode_body(body, ctype, 10)
    assert err.value.status == status


def test_partial_batch_keeps_good_events_and_indexes_bad_ones():
    items = [GOOD, {**GOOD, "amount": -5}, {**GOOD, "event_id": "mine", "user_id": "u2"}]
    checked = check_events(V, items, source="http", now=NOW)
    assert [o.event_id for o in checked.accepted][1] == "mine"
    assert [o.key for o in checked.accepted] == [b"u1", b"u2"]
    assert [(r.index, r.field, r.code) for r in checked.rejected] == [(1, "amount", "out_of_range")]
    record = wire(checked.accepted[1].value, Event)
    assert record["source"] == "http" and record["ingested_at"] == "2026-11-26T12:00:00Z"


def test_labels_are_keyed_by_their_event():
    checked = check_labels(V, [{"event_id": "e9", "value": False}, {"event_id": "e9"}], source="http", now=NOW)
    assert [o.key for o in checked.accepted] == [b"e9"]
    assert [(r.index, r.field, r.code) for r in checked.rejected] == [(1, "value", "missing")]


def _record(value: bytes | None, topic="events.raw", offset=7) -> ConsumerRecord:
    return ConsumerRecord(topic, 2, offset, 0, 0, b"k", value, None, 1, len(value or b""), [])


def test_raw_records_get_a_stable_id_or_a_reason():
    good = check_raw(V, _record(dumps(GOOD)), "event", NOW)
    assert good.error is None and good.outgoing.event_id == derived_event_id("events.raw", 2, 7)
    assert check_raw(V, _record(dumps(GOOD)), "event", NOW).outgoing.value == good.outgoing.value
    bad = check_raw(V, _record(b"not json"), "event", NOW)
    assert bad.outgoing is None and bad.error.reason_code == "invalid_json"
    tomb = check_raw(V, _record(None), "event", NOW)
    assert tomb.error.reason_code == "not_an_object"
    label = check_raw(V, _record(dumps({"event_id": "e1", "value": 3}), "labels.raw"), "label", NOW)
    assert label.error is not None and "binary label" in str(label.error)


def test_a_raw_batch_keeps_its_order_whichever_path_each_record_takes():
    # Canonical UTC events take the fast path, an offset time or a bad record the full one; a
    # record too large for Kafka is refused by both. Per kind, the output is in input order and each
    # record is what check_raw builds alone.
    values = [dumps({**GOOD, "amount": 1.0}), dumps({**GOOD, "amount": 2, "ts": "2026-11-26T11:00:00+01:00"}),
              b"{bad", dumps({**GOOD, "amount": 3.5, "event_id": "own-3"}),
              dumps({"event_id": "e1", "value": True}), dumps({**GOOD, "amount": 4.0, "ts": "2026-11-26T10:00:00"}),
              dumps({**GOOD, "merchant_category": "x"}), dumps({**GOOD, "amount": 6.0})]
    topics = ["events.raw"] * 4 + ["labels.raw"] + ["events.raw"] * 3
    records = [_record(v, t, offset=i) for i, (v, t) in enumerate(zip(values, topics))]
    limits = Limits(max_record_bytes=4096)
    batch = check_raw_batch(V, records, {"events.raw": "event", "labels.raw": "label"}, NOW, limits)
    one_by_one = [check_raw(V, r, "label" if r.topic == "labels.raw" else "event", NOW, limits) for r in records]
    for kind in ("event", "label"):
        assert batch.accepted[kind] == [(o.outgoing.key, o.outgoing.value) for o in one_by_one
                                        if o.kind == kind and o.outgoing is not None]
    assert [wire(v, Event)["data"]["amount"] for _, v in batch.accepted["event"]] == [1.0, 2.0, 3.5, 4.0, 6.0]
    assert [o.record.offset for o in batch.rejected] == [2, 6]
    assert [wire(v, Event)["event_id"] for _, v in batch.accepted["event"]][2] == "own-3"
    big = check_raw_batch(V, [_record(dumps({**GOOD, "user_id": "u" * 60}))], {"events.raw": "event"}, NOW,
                          Limits(max_record_bytes=200))
    assert big.accepted["event"] == [] and big.rejected[0].error.reason_code == "too_large"


def test_no_records_is_one_clear_reason():
    for body, ctype in ((b"[]", "application/json"), (b"", "application/json"),
                        (b"\n", "application/x-ndjson")):
        with pytest.raises(BadRequest, match=NO_EVENTS):
            decode_body(body, ctype, 10)


def test_event_times_ahead_of_the_clock_are_rejected_per_record_on_both_paths():
    limits = Limits(max_future=timedelta(seconds=300))
    future = {**GOOD, "ts": "9999-12-31T23:59:59Z"}
    soon = {**GOOD, "ts": "2026-11-26T12:04:00Z"}  # 4 minutes ahead: within the allowance
    checked = check_events(V, [GOOD, future, soon], source="http", now=NOW, limits=limits)
    assert len(checked.accepted) == 2
    assert [(r.index, r.field, r.code) for r in checked.rejected] == [(1, "ts", "future")]
    raw = check_raw(V, _record(dumps(future)), "event", NOW, limits)
    assert raw.outgoing is None and raw.error.reason_code == "future"
    label = {"event_id": "e1", "value": 1, "observed_at": "2026-11-26T12:06:00Z"}
    checked = check_labels(V, [label], source="http", now=NOW, limits=limits)
    assert [r.code for r in checked.rejected] == ["future"]
    raw_label = check_raw(V, _record(dumps(label), "labels.raw"), "label", NOW, limits)
    assert raw_label.error.reason_code == "future"


# The fraud spec bounds every string; without max_length on the entity key an event can outgrow Kafka's
# 1 MiB record limit (the entity is in the key, in `entity` and in `data`).
UNBOUNDED = EventValidator(parse_spec(fraud_text(user_max_length=None)))


def test_records_over_the_size_limit_are_rejected_per_record_with_code_too_large():
    limits = Limits(max_record_bytes=100_000)
    big = {**GOOD, "user_id": "u" * 40_000}  # about 120 kB as key + entity + data.user_id
    checked = check_events(UNBOUNDED, [GOOD, big], source="http", now=NOW, limits=limits)
    assert len(checked.accepted) == 1
    [rejection] = checked.rejected
    assert (rejection.index, rejection.field, rejection.code) == (1, "", "too_large")
    assert "the limit is 100000" in rejection.reason
    raw = check_raw(UNBOUNDED, _record(dumps(big)), "event", NOW, limits)
    assert raw.outgoing is None and raw.error.reason_code == "too_large"
    assert check_raw(UNBOUNDED, _record(dumps(GOOD)), "event", NOW, limits).outgoing is not None
    # the default limit (512 KiB) stays below what the producer and broker take (~1 MiB)
    huge = {**GOOD, "user_id": "u" * 400_000}
    assert check_events(UNBOUNDED, [huge], source="http", now=NOW).rejected[0].code == "too_large"
