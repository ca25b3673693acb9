"""The feature service's domain without a broker: event processing and the label join's expiry."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from services.features.domain import (
    LABEL_CLOCK, WORKER_CLOCK, JoinTable, LabelClock, LabelJoin, Rejected, decode_event, decode_expiry,
    decode_join_input, expiry_key, process_event,
)
from shared.events import FeatureSnapshot
from shared.features import FeatureEngine, FeatureStore
from shared.serialization import dumps
from tests.data import FRAUD, TXN, DictKV, JoinKV, envelope, label, snapshot, txn, wire

T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)
DAY = 86_400.0


def event(eid: str, at: datetime, **fields) -> dict:
    """The `Event` record of a fraud event with id `eid` at `at` (user u1)."""
    return envelope(txn(ts=at, **fields), event_id=eid)


# ---------------------------------------------------------------- events

def test_process_event_rejects_far_future_oversized_and_undecodable_events():
    store, kv = FeatureStore(FeatureEngine(FRAUD)), DictKV()
    now = T0.timestamp()

    def run(record, max_bytes=900_000):
        return process_event(store, kv, 0, record, now=now, max_future_s=300, max_bytes=max_bytes)
    assert run(event("a", T0)).status == "new"
    with pytest.raises(Rejected) as exc:
        run(event("b", T0 + timedelta(seconds=301)))
    assert exc.value.code == "future" and "300s ahead" in str(exc.value)
    assert run(event("c", T0 + timedelta(seconds=300))).status == "new"  # at the bound: accepted
    with pytest.raises(Rejected) as exc:
        run(event("d", T0), max_bytes=100)
    assert exc.value.code == "too_large"
    bad_category = event("e", T0)
    bad_category["data"]["country"] = "XX"
    with pytest.raises(Rejected) as exc:
        run(bad_category)
    assert exc.value.code == "invalid" and "country" in str(exc.value)
    assert len(store.state(kv, 0, b"u1")) == 2  # nothing rejected changed the state
    for raw, code in [(b"{", "invalid_json"), (b"[]", "invalid"), (dumps({"event_id": "x"}), "invalid"),
                      (dumps({**event("f", T0), "entity": 5}), "invalid"), (None, "invalid")]:
        with pytest.raises(Rejected) as exc:
            decode_event(raw)
        assert exc.value.code == code


def test_a_resent_event_id_with_a_changed_payload_gets_the_original_snapshot_byte_for_byte():
    store, kv = FeatureStore(FeatureEngine(FRAUD)), DictKV()
    now = T0.timestamp() + DAY
    first = process_event(store, kv, 0, event("a", T0), now=now, max_future_s=300, max_bytes=900_000)
    process_event(store, kv, 0, event("b", T0 + timedelta(minutes=1)), now=now, max_future_s=300, max_bytes=900_000)
    again = process_event(store, kv, 0, event("a", T0 + timedelta(minutes=2), amount=99.0), now=now,
                          max_future_s=300, max_bytes=900_000)
    assert again.status == "duplicate" and again.snapshot == first.snapshot
    assert wire(again.snapshot, FeatureSnapshot)["data"]["amount"] == TXN["amount"]


# ---------------------------------------------------------------- the join

def join() -> tuple[JoinTable, JoinKV, LabelClock]:
    return JoinTable(LabelJoin(FRAUD, wall_grace_s=DAY)), JoinKV(), LabelClock()


def feed_label(table, view, clock, eid, observed, now=0.0):
    clock.observe(0, observed.timestamp())
    return table.apply(view, eid.encode(), "label", label(eid, observed=observed), ["labels", 0, 1], now)


def test_a_label_within_max_delay_joins_however_far_snapshots_ran_ahead():
    """Replayed history: 30 days of snapshots first, then the labels (each a day after its event)."""
    table, view, clock = join()
    for d in range(30):
        snap = snapshot(event(f"e{d}", T0 + timedelta(days=d)))
        table.apply(view, f"e{d}".encode(), "snapshot", snap, ["s", 0, d], 0.0)
        assert table.sweep(view, clock.now(0), 0.0) == []  # snapshot time does not expire anything
    examples = []
    for d in range(30):
        res = feed_label(table, view, clock, f"e{d}", T0 + timedelta(days=d + 1))
        examples.append(res.example["event_id"])
        assert all(g.kind == "joined" for g in table.sweep(view, clock.now(0), 0.0))
    assert examples == [f"e{d}" for d in range(30)]


def test_an_unlabelled_snapshot_expires_on_the_label_clock_and_is_returned_for_the_dead_letter_topic():
    table, view, clock = join()
    table.apply(view, b"never", "snapshot", snapshot(event("never", T0)), ["snapshots.by-event", 2, 17], 0.0)
    due = T0 + timedelta(days=7, minutes=5)
    feed_label(table, view, clock, "x1", due)
    feed_label(table, view, clock, "x2", due)  # the clock is the second-largest label time: exactly due
    assert table.sweep(view, clock.now(0), 0.0) == []
    feed_label(table, view, clock, "x3", due + timedelta(seconds=1))
    assert table.sweep(view, clock.now(0), 0.0) == []  # one label past it is not enough
    feed_label(table, view, clock, "x4", due + timedelta(seconds=1))
    [gone] = table.sweep(view, clock.now(0), 0.0)
    assert (gone.kind, gone.key, gone.src) == ("snapshot", b"never", ["snapshots.by-event", 2, 17])
    assert gone.record["event_id"] == "never" and "max delay" in gone.reason
    assert view.get(b"never") is None and not any(k[:1] in (LABEL_CLOCK, WORKER_CLOCK) and k.endswith(b"never")
                                                  for k in view)


def test_one_far_future_label_does_not_move_the_clock():
    clock = LabelClock()
    clock.observe(0, 100.0)
    clock.observe(0, 253402300799.0)  # 9999-12-31
    assert clock.now(0) == 100.0
    clock.observe(0, 150.0)
    assert clock.now(0) == 150.0 and clock.now(1) == float("-inf")


def test_labels_before_their_event_or_too_late_are_refused_and_not_dead_lettered_twice():
    table, view, clock = join()
    table.apply(view, b"a", "snapshot", snapshot(event("a", T0)), ["s", 0, 1], 0.0)
    res = feed_label(table, view, clock, "a", T0 - timedelta(seconds=1))
    assert res.status == "label_before_event" and "before its event" in res.reason
    res = feed_label(table, view, clock, "a", T0 + timedelta(days=7, seconds=1))
    assert res.status == "late_label" and res.example is None
    assert feed_label(table, view, clock, "a", T0 + timedelta(days=1)).status == "late_label"  # the first late stands
    feed_label(table, view, clock, "y", T0 + timedelta(days=30))
    feed_label(table, view, clock, "z", T0 + timedelta(days=30))
    [gone] = table.sweep(view, clock.now(0), 0.0)
    assert gone.kind == "late_label" and gone.record is None  # its label is in the DLQ already


def test_every_entry_expires_on_the_worker_clock_too():
    table, view, clock = join()
    feed_label(table, view, clock, "orphan", T0, now=1000.0)  # a label whose event never comes
    assert table.sweep(view, clock.now(0), 1000.0 + 7 * DAY + DAY) == []
    [gone] = table.sweep(view, clock.now(0), 1000.0 + 8 * DAY + 1)
    assert gone.kind == "label" and gone.record["target_event_id"] == "orphan"


def test_decode_join_input_checks_what_the_join_reads():
    now = T0.timestamp()
    assert decode_join_input("label", dumps(label("a", observed=T0)), now=now, max_future_s=300)["value"] is True
    for kind, value, code in [("label", b"x", "invalid_json"), ("label", dumps({"event_id": "a"}), "invalid"),
                              ("snapshot", dumps(event("a", T0)), "invalid"),
                              ("label", dumps(label("a", observed=T0 + timedelta(hours=1))), "future")]:
        with pytest.raises(Rejected) as exc:
            decode_join_input(kind, value, now=now, max_future_s=300)
        assert exc.value.code == code


def test_index_keys_sort_by_time_then_key_and_round_trip():
    times = [1.5, 1_772_355_600.0, 1_772_355_600.25, 1_772_960_400.0, 86_400.0]
    keys = [expiry_key(LABEL_CLOCK, t, f"evt-{i}".encode()) for i, t in enumerate(times)]
    assert [decode_expiry(k) for k in sorted(keys)] == sorted((t, f"evt-{i}".encode()) for i, t in enumerate(times))


def test_index_keys_sort_after_every_event_id():
    # event ids are UTF-8 text: no byte is 0xfd or 0xfe, so an index scan never meets an entry
    for eid in ["zzzz", "\uffff" * 3, "ünïcode-𝔁", "__faust\0offset__"]:
        assert eid.encode() < WORKER_CLOCK < LABEL_CLOCK <= expiry_key(LABEL_CLOCK, 0.0, b"")
