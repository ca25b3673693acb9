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
from shared import features
from shared.features import (
    FeatureEngine, FeatureStore, Processed, StateFormatError, event_id_hash, parse_state_key, state_key,
)
from shared.serialization import dumps, loads
from shared.spec import parse_spec
from tests.data import FRAUD, DictKV, iso, txn
from tests.reference import Reference, assert_same

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


def run_and_compare(spec, stream, *, cache_entities: int = 3, hot: int | None = None) -> dict:
    """Every event through a FeatureStore (a small cache, so states are decoded from their records
    again and again) against the pandas reference; duplicates must re-emit the original's record."""
    engine = FeatureEngine(spec)
    store = FeatureStore(engine, cache_entities=cache_entities)
    kv = DictKV()
    ref = Reference(spec)
    emitted: dict = {}
    results = []
    stats: dict = defaultdict(int)
    with pytest.MonkeyPatch.context() as mp:
        if hot is not None:
            mp.setattr(features, "HOT", hot)
        for k, (event_id, fields) in enumerate(stream):
            entity = (engine.entity_of(fields) or "-").encode()
            t = engine.event_time(fields)
            state = store.state(kv, 0, entity)
            served = engine.snapshot(state, t, fields)
            before = dict(kv)
            if t < state.max_t:
                stats["out_of_order"] += 1
            if k % 7 == 0:
                store.new_batch()
            got = store.process(kv, 0, entity, event_id, t, fields, dumps)
            status, row, max_t = ref.process(event_id, t, fields)
            assert got.status == status, f"event {k} ({event_id}): engine {got.status}, pandas {status}"
            stats[status] += 1
            if status == "new":
                assert loads(got.record) == served, f"event {k}: snapshot() differs from the emitted one"
                emitted[event_id] = got.record
            else:
                assert dict(kv) == before, f"event {k}: a {status} event changed the stored state"
            if status == "late":
                assert got.record is None and got.behind > spec.features.allowed_lateness.total_seconds()
                continue
            if status == "duplicate":
                assert got.record == emitted[event_id], f"event {k}: a duplicate re-emits other bytes"
                continue
            results.append((k, loads(got.record), row))
    snapshots = ref.snapshots()
    for k, feats, row in results:
        assert_same(feats, snapshots[(row["entity"], row["seq"])], f"event {k}")
    store.drop()
    states = [store.state(kv, 0, e) for e in {parse_state_key(key)[0] for key in kv}]
    stats["kept"] = sum(len(s) for s in states)
    stats["accepted"] = sum(len(rows) for rows in ref.accepted.values())
    stats["records"] = len(kv)
    return stats


def check_stats(stats: dict) -> None:
    assert stats["new"] > 0 and stats["duplicate"] > 20 and stats["late"] > 10 and stats["out_of_order"] > 50


@pytest.mark.parametrize("hot", [None, 2], ids=["direct", "running"])
def test_fraud_spec_matches_pandas(hot):
    stream = make_stream(FRAUD, fraud_fields, seed=1, n=3000, entities=50, gap=150.0)
    stats = run_and_compare(FRAUD, stream, hot=hot)
    check_stats(stats)
    assert stats["kept"] < stats["accepted"]  # eviction happened


@pytest.mark.parametrize("hot", [None, 2], ids=["direct", "running"])
def test_custom_spec_matches_pandas(hot):
    spec = custom_spec()
    stats = run_and_compare(spec, make_stream(spec, custom_fields, seed=2, n=2000, entities=15, gap=12.0), hot=hot)
    check_stats(stats)
    assert stats["kept"] < stats["accepted"]


@pytest.mark.parametrize("hot", [None, 2], ids=["direct", "running"])
def test_spec_without_entity_matches_pandas(hot):
    spec = custom_spec(entity=False)
    engine = FeatureEngine(spec)
    assert engine.entity_of({"account": "x"}) is None
    stats = run_and_compare(spec, make_stream(spec, custom_fields, seed=3, n=900, entities=5, gap=20.0), hot=hot)
    assert stats["new"] > 0 and stats["duplicate"] > 5 and stats["late"] > 5


def test_spec_without_windows_matches_pandas():
    spec = custom_spec(definitions=NO_WINDOW_FEATURES)
    assert FeatureEngine(spec).retention == 120.0
    stats = run_and_compare(spec, make_stream(spec, custom_fields, seed=4, n=800, entities=4, gap=30.0))
    assert stats["new"] > 0 and stats["late"] > 5
    assert stats["kept"] < stats["accepted"] / 3


# ---------------------------------------------------------------- targeted properties

def feed(engine, state, events):
    return [engine.apply(state, eid, engine.event_time(f), f) for eid, f in events]


def test_no_look_ahead():
    engine = FeatureEngine(FRAUD)
    state = engine.new_state()
    feed(engine, state, [(f"a{i}", txn(user_id="u", ts=START + 60 * i, amount=10.0 + i)) for i in range(5)])
    big = engine.apply(state, "big", START + 300, txn(user_id="u", ts=START + 300, amount=49999.0))
    assert big.status == "new"
    assert big.features["amount_max_24h"] == 14.0 and big.features["last_amount"] == 14.0
    assert big.features["txn_count_1h"] == 5 and big.features["amount_ratio_24h"] == 49999.0 / 12.0
    after = engine.apply(state, "next", START + 301, txn(user_id="u", ts=START + 301, amount=1.0)).features
    assert after["amount_max_24h"] == 49999.0 and after["last_amount"] == 49999.0
    assert after["txn_count_1h"] == 6
    # An out-of-order event sees only earlier *times*: the later-timed events already processed are excluded.
    early = engine.apply(state, "early", START + 90, txn(user_id="u", ts=START + 90, amount=7.0)).features
    assert early["txn_count_1h"] == 2 and early["last_amount"] == 11.0 and early["secs_since_last"] == 30.0
    # ... and it never changes snapshots already emitted; the next event does see it.
    z = engine.apply(state, "z", START + 302, txn(user_id="u", ts=START + 302, amount=1.0))
    assert z.features["txn_count_1h"] == 8


def test_duplicates_reemit_the_original_record_and_late_events_are_rejected():
    engine = FeatureEngine(FRAUD)
    store, kv = FeatureStore(engine), DictKV()
    events = [(f"d{i}", txn(user_id="u", ts=START + 37 * i + (i % 3) * 100, amount=5.0 * i,
                            country="FR" if i % 2 else "DE")) for i in range(12)]
    first = [store.process(kv, 0, b"u", eid, engine.event_time(f), f, dumps) for eid, f in events]
    assert all(p.status == "new" for p in first)
    before = dict(kv)
    for i in (0, 3, 7, 11):
        event_id, fields = events[i]
        again = store.process(kv, 0, b"u", event_id, engine.event_time(fields), fields, dumps)
        assert again == Processed("duplicate", first[i].record) and dict(kv) == before
    # The redelivery is recognized by event_id, whatever its payload: the original record comes back.
    changed = txn(user_id="u", ts=START, amount=1.0)
    assert store.process(kv, 0, b"u", "d5", START, changed, dumps).record == first[5].record
    state = store.state(kv, 0, b"u")
    late_t = state.max_t - 301
    assert store.process(kv, 0, b"u", "late-1", late_t, txn(user_id="u", ts=late_t, amount=3.0), dumps) == \
        Processed("late", None, 301.0)
    assert engine.is_late(state, late_t) and not engine.is_late(state, state.max_t - 300)
    assert dict(kv) == before
    ok_t = state.max_t - 300  # exactly at the lateness bound: accepted
    edge = txn(user_id="u", ts=ok_t, amount=3.0)
    assert store.process(kv, 0, b"u", "edge", ok_t, edge, dumps).status == "new"


def test_a_render_failure_changes_nothing():
    engine = FeatureEngine(FRAUD)
    store, kv = FeatureStore(engine), DictKV()
    store.process(kv, 0, b"u", "a", START, txn(user_id="u", ts=START, amount=1.0), dumps)
    before, arrivals = dict(kv), store.state(kv, 0, b"u").arrivals()

    def refuse(features):
        raise ValueError("too large")
    b = txn(user_id="u", ts=START + 1, amount=2.0)
    with pytest.raises(ValueError):
        store.process(kv, 0, b"u", "b", START + 1, b, refuse)
    assert dict(kv) == before and store.state(kv, 0, b"u").arrivals() == arrivals
    assert store.process(kv, 0, b"u", "b", START + 1, b, dumps).status == "new"


def test_decoded_state_continues_identically():
    """A state decoded from its records equals the in-memory one that never left the engine."""
    stream = make_stream(FRAUD, fraud_fields, seed=5, n=1500, entities=10, gap=120.0)
    engine = FeatureEngine(FRAUD)
    plain: dict = {}
    kv = DictKV()
    store = FeatureStore(engine)
    rng = random.Random(0)
    for event_id, fields in stream:
        entity, t = engine.entity_of(fields).encode(), engine.event_time(fields)
        if rng.random() < 0.5:
            store.drop()  # the next call decodes the entity from its records
        a = plain.setdefault(entity, engine.new_state())
        assert store.state(kv, 0, entity) == a
        if kv.get(state_key(entity, b"s", features._U64.pack(event_id_hash(event_id)))) is not None:
            continue  # a duplicate (the engine alone does not know about duplicates)
        got = store.process(kv, 0, entity, event_id, t, fields, dumps)
        want = engine.apply(a, event_id, t, fields)
        assert got.status == want.status
        if got.status == "new":
            assert loads(got.record) == want.features


def test_state_of_other_features_or_corrupt_records_is_refused():
    engine = FeatureEngine(FRAUD)
    store, kv = FeatureStore(engine), DictKV()
    for i in range(features.CHUNK + 3):
        store.process(kv, 0, b"u", f"x{i}", START + i, txn(user_id="u", ts=START + i, amount=1.0), dumps)
    head = kv[state_key(b"u", b"h")]
    chunk_key = state_key(b"u", b"c", features._U64.pack(0))
    assert engine.chunks_of(head) == range(0, 1) and chunk_key in kv

    def decode(head_bytes, chunks=kv.get, eng=engine):
        return eng.decode(head_bytes, lambda k: chunks(state_key(b"u", b"c", features._U64.pack(k))))
    assert len(decode(head)) == features.CHUNK + 3
    with pytest.raises(StateFormatError, match="different feature definitions"):
        decode(head, eng=FeatureEngine(custom_spec()))
    for bad in (head[:-1], head + b"\0", b"PK" + head[2:], head[:10]):
        with pytest.raises(StateFormatError):
            decode(bad)
    with pytest.raises(StateFormatError, match="chunk 0 is missing"):
        decode(head, chunks=lambda key: None)
    with pytest.raises(StateFormatError):
        decode(head, chunks=lambda key: kv[chunk_key][:-8])


class SizeKV(DictKV):
    largest = 0

    def set(self, key: bytes, value: bytes) -> None:
        self.largest = max(self.largest, len(value))
        self[key] = value


def busy_entity(n: int, gap: float, seed: int = 3) -> list[tuple[str, dict]]:
    """n events of one user, `gap` seconds apart, a fifth of them up to 200 s out of order."""
    rng = random.Random(seed)
    cats = FRAUD.event.fields["merchant_category"].values
    return [(f"e{i}", txn(user_id="u", ts=t, amount=round(rng.lognormvariate(3, 1), 2),
                          merchant_category=cats[i % 7]))
            for i in range(n)
            for t in [START + i * gap - (rng.uniform(0, 200) if rng.random() < 0.2 else 0.0)]]


def run_busy(events, hot: int) -> tuple[list[bytes], SizeKV, FeatureStore]:
    engine = FeatureEngine(FRAUD)
    kv, store = SizeKV(), FeatureStore(engine)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(features, "HOT", hot)
        out = []
        for i, (eid, f) in enumerate(events):
            if i % 50 == 0:
                store.new_batch()
            out.append(store.process(kv, 0, b"u", eid, engine.event_time(f), f, dumps))
    assert all(p.status == "new" for p in out)
    return [p.record for p in out], kv, store


def test_running_aggregates_equal_direct_evaluation_in_a_busy_window():
    events = busy_entity(4000, 20.0)
    direct, _, _ = run_busy(events, 10**9)
    running, _, store = run_busy(events, features.HOT)
    assert running == direct
    assert loads(direct[-1])["amount_std_24h"] is not None


def test_records_stay_small_and_few_however_many_events_a_window_holds():
    """20,000 events inside one entity's 24 h window: no record written grows with them, and the
    records of evicted events are deleted."""
    records, kv, store = run_busy(busy_entity(20_000, 5.0), features.HOT)
    assert kv.largest <= max(max(map(len, records)) + 16, 40 * features.CHUNK + 200)
    state = store.state(kv, 0, b"u")
    groups = store.engine._groups
    assert all(run is not None for g, run in zip(groups, state.runs) if g.nums or g.dists)  # all incremental
    # kept: 24 h 5 min at one event per 5 s; records: head + a chunk per 32 + one "seen" per event
    assert 86_700 / 5 - 60 < len(state) < 86_700 / 5 + 60
    assert len(kv) < len(state) * (1 + 1 / features.CHUNK) + 3 * features.CHUNK
    assert 700 <= loads(records[-1])["txn_count_1h"] <= 760


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


class LogKV(DictKV):
    """A store whose writes also go to a changelog, batch by batch, each key at its last write
    (what BatchTable sends)."""

    def __init__(self, data=()):
        super().__init__(data)
        self.pending: dict = {}

    def set(self, key: bytes, value: bytes) -> None:
        self[key] = value
        self.pending.pop(key, None)
        self.pending[key] = value

    def delete(self, key: bytes) -> None:
        self.pop(key, None)
        self.pending.pop(key, None)
        self.pending[key] = None

    def take(self) -> list:
        batch, self.pending = list(self.pending.items()), {}
        return batch


def run_batches(store, kv, stream, batches, first: int = 0):
    """Process batches[first:] of the stream; returns ({event_id: record}, changelog per batch)."""
    engine, out, log = store.engine, {}, []
    for start, end in batches[first:]:
        store.new_batch()
        for event_id, fields in stream[start:end]:
            p = store.process(kv, 0, engine.entity_of(fields).encode(), event_id, engine.event_time(fields),
                              fields, dumps)
            if p.record is not None:
                out.setdefault(event_id, p.record)
                assert out[event_id] == p.record, f"{event_id}: a redelivery emitted other bytes"
        log.append(kv.take())
    return out, log


@pytest.mark.parametrize("hot", [None, 2], ids=["direct", "running"])
def test_a_changelog_cut_anywhere_by_a_crash_recovers_to_the_same_snapshots(hot):
    """kill -9 may cut the changelog in the middle of a batch. Rebuild the store from that prefix,
    redeliver every event from the batch on (its offsets were not committed), and every snapshot
    must equal the one of a run without a crash."""
    rng = random.Random(11)
    # one busy entity over 40 h (chunks are sealed and leave the retention) and a few others
    stream = busy_entity(1200, 120.0, seed=4)
    for event_id, fields in make_stream(FRAUD, fraud_fields, seed=8, n=600, entities=6, gap=900.0):
        stream.insert(rng.randrange(len(stream) + 1), (event_id, fields))
    cuts, batches, i = [], [], 0
    while i < len(stream):
        n = rng.randint(1, 40)
        batches.append((i, min(i + n, len(stream))))
        i += n
    with pytest.MonkeyPatch.context() as mp:
        if hot is not None:
            mp.setattr(features, "HOT", hot)
        engine = FeatureEngine(FRAUD)
        want, log = run_batches(FeatureStore(engine), LogKV(), stream, batches)
        # random cuts, and a cut right after every chunk deletion (before the head that follows)
        trials = [(b, rng.randint(0, len(log[b]))) for b in rng.sample(range(1, len(batches)), 25)]
        trials += [(b, j + 1) for b in range(1, len(batches)) for j, (key, value) in enumerate(log[b])
                   if value is None and parse_state_key(key)[1] == b"c"]
        assert len(trials) > 30
        for b, cut in trials:
            kv = LogKV()
            for records in log[:b] + [log[b][:cut]]:
                for key, value in records:
                    if value is None:
                        kv.pop(key, None)
                    else:
                        kv[key] = value
            got, _ = run_batches(FeatureStore(engine), kv, stream, batches, first=b)
            cuts.append((b, cut))
            assert {k: v for k, v in want.items() if k in got} == got, f"batch {b}, cut {cut}"
    assert any(0 < cut < len(log[b]) for b, cut in cuts)
