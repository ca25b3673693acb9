"""The online feature engine (shared/features.py) against an independent pandas recomputation.

The reference (tests/reference.py) re-implements the documented semantics the slow, obvious way
with pandas over every earlier accepted event.
"""
from __future__ import annotations

import math
import random
from collections import defaultdict
from datetime import datetime, timezone

import pytest

from shared.errors import SpecError
from shared.events import EventValidator
from shared.features import Applied, EntityState, FeatureEngine, StateFormatError
from shared.spec import load_spec, parse_spec
from tests.reference import Reference, assert_same

FRAUD = load_spec("examples/fraud/pipeline.yaml")
START = datetime(2026, 3, 1, tzinfo=timezone.utc).timestamp()

CUSTOM_YAML = """
name: custom
{entity}
event:
  time_field: at
  fields:
    account: {{type: string}}
    qty: {{type: int, min: -3, max: 3}}
    price: {{type: float, required: false}}
    shop: {{type: string, required: false}}
    kind: {{type: category, values: [a, b, c]}}
    promo: {{type: bool, required: false}}
    at: {{type: timestamp}}
label: {{name: y, type: binary, max_delay: 1d}}
metrics: {{primary: roc_auc}}
features:
  allowed_lateness: 2m
  definitions:
{definitions}
"""
CUSTOM_FEATURES = """
    - {name: n_5m, agg: count, window: 5m}
    - {name: n_15m_t, agg: count, window: 15m, kind: tumbling}
    - {name: qty_sum_15m_t, agg: sum, field: qty, window: 15m, kind: tumbling}
    - {name: qty_mean_1h, agg: mean, field: qty, window: 1h}
    - {name: qty_ratio_1h, agg: ratio_to_mean, field: qty, window: 1h}
    - {name: qty_distinct_1h, agg: distinct, field: qty, window: 1h}
    - {name: qty_min_1h_t, agg: min, field: qty, window: 1h, kind: tumbling}
    - {name: price_sum_30m, agg: sum, field: price, window: 30m}
    - {name: price_mean_30m, agg: mean, field: price, window: 30m}
    - {name: price_std_30m, agg: std, field: price, window: 30m}
    - {name: price_min_30m, agg: min, field: price, window: 30m}
    - {name: price_max_30m, agg: max, field: price, window: 30m}
    - {name: price_ratio_30m, agg: ratio_to_mean, field: price, window: 30m}
    - {name: price_std_1h_t, agg: std, field: price, window: 1h, kind: tumbling}
    - {name: shop_distinct_1h, agg: distinct, field: shop, window: 1h}
    - {name: kind_distinct_15m, agg: distinct, field: kind, window: 15m}
    - {name: promo_distinct_1h, agg: distinct, field: promo, window: 1h}
    - {name: last_qty, agg: last, field: qty}
    - {name: last_price, agg: last, field: price}
    - {name: last_kind, agg: last, field: kind}
    - {name: last_promo, agg: last, field: promo}
    - {name: since_last, agg: time_since_last}
"""
NO_WINDOW_FEATURES = """
    - {name: last_price, agg: last, field: price}
    - {name: last_qty, agg: last, field: qty}
    - {name: since_last, agg: time_since_last}
"""


def custom_spec(entity: bool = True, definitions: str = CUSTOM_FEATURES):
    return parse_spec(CUSTOM_YAML.format(entity="entity: {key: account}" if entity else "",
                                         definitions=definitions.strip("\n")))


# ---------------------------------------------------------------- the pandas reference

# ---------------------------------------------------------------- randomized streams

def iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).isoformat()


def fraud_fields(rng: random.Random, entity: str, t: float) -> dict:
    return {
        "user_id": entity,
        "amount": rng.choice([round(rng.lognormvariate(3.5, 1.2), 2), float(rng.randint(1, 40)), 10.0]),
        "merchant_category": rng.choice(FRAUD.event.fields["merchant_category"].values[:5]),
        "country": rng.choice(["DE", "DE", "DE", "FR", "NG"]),
        "channel": rng.choice(["pos", "web", "app"]),
        "ts": iso(t),
    }


def custom_fields(rng: random.Random, entity: str, t: float) -> dict:
    out = {"account": entity, "qty": rng.choice([0, 0, 0, 1, 2, 3, -1, -2, -3]),
           "kind": rng.choice("abc"), "at": iso(t)}
    if rng.random() < 0.8:
        out["price"] = rng.choice([round(rng.uniform(0, 100), 2), 0.0, 5.0, 1e6 + rng.random()])
    if rng.random() < 0.7:
        out["shop"] = rng.choice(["s1", "s2", "s3", "s4", "shop-ü"])
    if rng.random() < 0.6:
        out["promo"] = rng.random() < 0.5
    return out


def make_stream(spec, make_fields, *, seed: int, n: int, entities: int, gap: float) -> list[tuple[str, dict]]:
    """(event_id, validated fields) in arrival order: bursts, out-of-order and late events,
    equal timestamps, window-boundary times, and redeliveries (same id and fields)."""
    rng = random.Random(seed)
    validator = EventValidator(spec)
    lateness = spec.features.allowed_lateness.total_seconds()
    windows = [d.window.total_seconds() for d in spec.features.definitions if d.window] or [3600.0]
    clock = START + rng.random() * 3600
    names = [f"e{i:02d}" for i in range(entities)]
    entity = names[0]
    last_t: dict = {}
    sent: list = []
    out: list = []
    for i in range(n):
        if sent and rng.random() < 0.06:
            out.append(rng.choice(sent[-30:]) if rng.random() < 0.8 else rng.choice(sent))
            continue
        clock += rng.choice([0.0, 1.0, round(rng.expovariate(1 / gap)), rng.expovariate(1 / gap)])
        if rng.random() > 0.4:
            entity = rng.choice(names)
        u = rng.random()
        if u < 0.12:
            t = clock - rng.uniform(0, lateness)  # out of order, within the allowed lateness
        elif u < 0.16:
            t = clock - lateness - rng.uniform(1, 4 * lateness)  # usually late
        elif u < 0.24 and entity in last_t:
            t = last_t[entity]  # equal timestamps
        elif u < 0.28:
            t = math.floor(clock / (w := rng.choice(windows))) * w  # on a tumbling boundary
        elif u < 0.32 and entity in last_t and last_t[entity] + (w := rng.choice(windows)) <= clock:
            t = last_t[entity] + w  # exactly one window after the entity's last event
        else:
            t = clock
        t = float(round(t)) if rng.random() < 0.8 else round(t, 6)
        last_t[entity] = t
        fields = validator.validate(make_fields(rng, entity, t))
        event = (f"id-{i}", fields)
        sent.append(event)
        out.append(event)
    return out


def run_and_compare(spec, stream, *, roundtrip_every: int = 0) -> dict:
    engine = FeatureEngine(spec)
    ref = Reference(spec)
    states: dict = {}
    results = []
    stats: dict = defaultdict(int)
    for k, (event_id, fields) in enumerate(stream):
        entity = engine.entity_of(fields)
        t = engine.event_time(fields)
        state = states.get(entity) or engine.new_state()
        if roundtrip_every and k % roundtrip_every == 0:
            state = engine.load(engine.dump(state))
        served = engine.snapshot(state, t, fields)
        before = state.to_bytes()
        if t < state.max_t:
            stats["out_of_order"] += 1
        applied = engine.apply(state, event_id, t, fields)
        states[entity] = state
        status, row, max_t = ref.process(event_id, t, fields)
        assert applied.status == status, f"event {k} ({event_id}): engine {applied.status}, pandas {status}"
        stats[status] += 1
        if status == "new":
            assert applied.features == served, f"event {k}: snapshot() differs from apply()"
        else:
            assert state.to_bytes() == before, f"event {k}: a {status} event changed the state"
        if status == "late":
            assert applied.features is None
            continue
        results.append((k, status, applied.features, row, max_t))
    snapshots = ref.snapshots()
    for k, status, features, row, max_t in results:
        want = snapshots[(row["entity"], row["seq"])]
        if status == "duplicate" and features is None:
            # Allowed only when eviction may have dropped part of the original's snapshot.
            assert row["t"] < max_t - ref.lateness or ref.max_window < ref.lateness, f"event {k}"
            stats["duplicate_unreplayable"] += 1
            continue
        assert_same(features, want, f"event {k} ({status})")
    stats["kept"] = sum(len(s) for s in states.values())
    stats["accepted"] = sum(len(rows) for rows in ref.accepted.values())
    return stats


def check_stats(stats: dict) -> None:
    assert stats["new"] > 0 and stats["duplicate"] > 20 and stats["late"] > 10 and stats["out_of_order"] > 50


def test_fraud_spec_matches_pandas():
    stream = make_stream(FRAUD, fraud_fields, seed=1, n=3000, entities=50, gap=150.0)
    stats = run_and_compare(FRAUD, stream)
    check_stats(stats)
    assert stats["kept"] < stats["accepted"]  # eviction happened


def test_custom_spec_matches_pandas():
    spec = custom_spec()
    stats = run_and_compare(spec, make_stream(spec, custom_fields, seed=2, n=2000, entities=15, gap=12.0))
    check_stats(stats)
    assert stats["kept"] < stats["accepted"]


def test_spec_without_entity_matches_pandas():
    spec = custom_spec(entity=False)
    engine = FeatureEngine(spec)
    assert engine.entity_of({"account": "x"}) is None
    stats = run_and_compare(spec, make_stream(spec, custom_fields, seed=3, n=900, entities=5, gap=20.0))
    assert stats["new"] > 0 and stats["duplicate"] > 5 and stats["late"] > 5


def test_spec_without_windows_matches_pandas():
    spec = custom_spec(definitions=NO_WINDOW_FEATURES)
    assert FeatureEngine(spec).retention == 120.0
    stats = run_and_compare(spec, make_stream(spec, custom_fields, seed=4, n=800, entities=4, gap=30.0))
    assert stats["new"] > 0 and stats["late"] > 5
    assert stats["kept"] < stats["accepted"] / 3


# ---------------------------------------------------------------- targeted properties

def txn(user: str, t: float, amount: float, cat: str = "grocery", country: str = "DE") -> dict:
    return {"user_id": user, "amount": amount, "merchant_category": cat, "country": country,
            "channel": "web", "ts": iso(t)}


def feed(engine, state, events):
    return [engine.apply(state, eid, engine.event_time(f), f) for eid, f in events]


def test_no_look_ahead():
    engine = FeatureEngine(FRAUD)
    state = engine.new_state()
    feed(engine, state, [(f"a{i}", txn("u", START + 60 * i, 10.0 + i)) for i in range(5)])
    big = engine.apply(state, "big", START + 300, txn("u", START + 300, 49999.0))
    assert big.status == "new"
    assert big.features["amount_max_24h"] == 14.0 and big.features["last_amount"] == 14.0
    assert big.features["txn_count_1h"] == 5 and big.features["amount_ratio_24h"] == 49999.0 / 12.0
    after = engine.apply(state, "next", START + 301, txn("u", START + 301, 1.0)).features
    assert after["amount_max_24h"] == 49999.0 and after["last_amount"] == 49999.0
    assert after["txn_count_1h"] == 6
    # An out-of-order event sees only earlier *times*: the later-timed events already processed are excluded.
    early = engine.apply(state, "early", START + 90, txn("u", START + 90, 7.0)).features
    assert early["txn_count_1h"] == 2 and early["last_amount"] == 11.0 and early["secs_since_last"] == 30.0
    # ... and it never changes snapshots already emitted; the next event does see it.
    assert engine.apply(state, "z", START + 302, txn("u", START + 302, 1.0)).features["txn_count_1h"] == 8


def test_duplicates_replay_identical_snapshots_and_late_events_are_rejected():
    engine = FeatureEngine(FRAUD)
    state = engine.new_state()
    events = [(f"d{i}", txn("u", START + 37 * i + (i % 3) * 100, 5.0 * i, country="FR" if i % 2 else "DE"))
              for i in range(12)]
    first = feed(engine, state, events)
    assert all(a.status == "new" for a in first)
    before = state.to_bytes()
    for i in (0, 3, 7, 11):
        event_id, fields = events[i]
        again = engine.apply(state, event_id, engine.event_time(fields), fields)
        assert again == Applied("duplicate", first[i].features)
        assert state.to_bytes() == before
    # The redelivery is recognized by event_id, whatever its payload.
    assert engine.apply(state, "d5", START, txn("u", START, 1.0)).features == first[5].features
    late_t = state.max_t - 301
    assert engine.apply(state, "late-1", late_t, txn("u", late_t, 3.0)) == Applied("late", None)
    assert engine.is_late(state, late_t) and not engine.is_late(state, state.max_t - 300)
    assert state.to_bytes() == before
    ok_t = state.max_t - 300  # exactly at the lateness bound: accepted
    assert engine.apply(state, "edge", ok_t, txn("u", ok_t, 3.0)).status == "new"


def test_serialization_round_trip_continues_identically():
    stream = make_stream(FRAUD, fraud_fields, seed=5, n=1500, entities=10, gap=120.0)
    engine = FeatureEngine(FRAUD)
    plain: dict = {}
    stored: dict = {}
    rng = random.Random(0)
    for event_id, fields in stream:
        entity, t = engine.entity_of(fields), engine.event_time(fields)
        a = plain.setdefault(entity, engine.new_state())
        data = stored.get(entity)
        b = engine.load(data)
        assert data is None or engine.dump(b) == data  # byte-exact round trip
        if rng.random() < 0.5:
            b = EntityState.from_bytes(b.to_bytes())
        assert engine.apply(a, event_id, t, fields) == engine.apply(b, event_id, t, fields)
        stored[entity] = engine.dump(b)
        assert stored[entity] == a.to_bytes() and a == b


def test_state_of_other_features_or_corrupt_bytes_is_refused():
    engine = FeatureEngine(FRAUD)
    state = engine.new_state()
    feed(engine, state, [("x", txn("u", START, 1.0))])
    data = engine.dump(state)
    with pytest.raises(StateFormatError):
        FeatureEngine(custom_spec()).load(data)
    for bad in (data[:-1], data + b"\0", b"PK" + data[2:], data[:10]):
        with pytest.raises(StateFormatError):
            engine.load(bad)
    assert len(engine.load(None)) == 0 and len(engine.load(b"")) == 0


def test_memory_is_bounded_by_the_largest_window():
    engine = FeatureEngine(FRAUD)
    state = engine.new_state()
    rng = random.Random(7)
    span = 30 * 86400
    times = sorted(START + rng.uniform(0, span) for _ in range(10_000))
    horizon = engine.retention
    assert horizon == 86400 + 300
    peak = 0
    for i, t in enumerate(times):
        assert engine.apply(state, f"m{i}", t, txn("u", t, 1.0 + i % 7)).status == "new"
        if i % 500 == 0 or i == len(times) - 1:
            kept_window = sum(1 for x in times[:i + 1] if x >= t - horizon)
            assert len(state) <= kept_window + 1  # + the newest older event, kept for `last`
            peak = max(peak, len(state))
    assert peak < 10_000 / 30 * 2  # ~333 events per day
    assert len(state.to_bytes()) < 40 * peak + 100
    # After a gap longer than every window, `last` and `time_since_last` still work.
    t = times[-1] + 3 * 86400
    f = engine.apply(state, "after-gap", t, txn("u", t, 2.0)).features
    assert f["txn_count_1h"] == 0 and f["amount_mean_24h"] is None and f["amount_sum_1h"] == 0.0
    assert f["last_amount"] == 1.0 + 9999 % 7 and f["secs_since_last"] == pytest.approx(3 * 86400)
    assert len(state) <= 2


def test_arrival_numbers_survive_rebasing():
    spec = custom_spec(definitions=NO_WINDOW_FEATURES)
    engine = FeatureEngine(spec)
    state = engine.new_state()
    for i in range(70_000):  # more arrivals than a uint16 column holds
        t = START + i
        fields = {"account": "a", "qty": 1, "kind": "a", "price": float(i), "at": iso(t)}
        engine.apply(state, f"r{i}", t, fields)
    assert state.next_seq == 70_000 and state.arrivals()[-1] == 69_999
    replay = engine.apply(state, "r69999", 0.0, {})
    assert replay == Applied("duplicate", {"last_price": 69_998.0, "last_qty": 1, "since_last": 1.0})
    assert EntityState.from_bytes(state.to_bytes()) == state


def test_types_are_json_ready():
    spec = custom_spec()
    engine = FeatureEngine(spec)
    state = engine.new_state()
    fields = {"account": "a", "qty": 2, "kind": "c", "price": 1.5, "shop": "s", "promo": True,
              "at": iso(START)}
    engine.apply(state, "1", START, fields)
    f = engine.snapshot(state, START + 1, fields)
    assert f["last_qty"] == 2 and type(f["last_qty"]) is int
    assert f["last_kind"] == 2 and f["last_promo"] == 1 and type(f["last_promo"]) is int
    assert type(f["qty_mean_1h"]) is float and type(f["n_5m"]) is int and type(f["price_min_30m"]) is float
    assert engine.event_time({"at": "2026-03-01T01:00:00+01:00"}) == START
    assert engine.feature_hash == spec.feature_hash() and engine.feature_names[0] == "n_5m"


def test_last_of_a_string_field_is_refused():
    with pytest.raises(SpecError, match="'last' of a string field is not a number"):
        FeatureEngine(custom_spec(definitions="    - {name: last_shop, agg: last, field: shop}"))
