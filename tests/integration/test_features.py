"""services/features against the real broker, run as real worker processes.

Every emitted snapshot is compared with a batch recomputation in pandas (tests/reference.py) over
the same events; snapshots are at-least-once, so repeated event ids must carry identical features.
"""
from __future__ import annotations

import asyncio
import itertools
import time

import httpx
import pytest
from aiokafka import TopicPartition
from aiokafka.partitioner import murmur2

from examples.fraud.generate import GeneratorConfig, generate
from shared.events import FeatureSnapshot, TrainingExample
from shared.kafka import make_consumer, header_dict
from shared.serialization import loads
from tests.data import FRAUD, envelope, keyed, label, txn, wire
from tests.reference import check_snapshots, covers
from tests.support import ServiceProcess, produce, read_topic, wait_until

pytestmark = pytest.mark.integration


def envelopes(raw_events: list[dict]) -> list[dict]:
    return [envelope(e) for e in raw_events]


async def send(kafka, topic: str, records: list[dict]) -> None:
    """Produce `Event` or `Label` records, keyed as ingest keys them."""
    await produce(kafka, topic, [keyed(r) for r in records])


def metric(w: ServiceProcess, name: str) -> float:
    """A sample's value on the worker's /metrics page (0 if absent)."""
    values = dict(line.rsplit(" ", 1) for line in httpx.get(f"{w.url}/metrics").text.splitlines()
                  if line and not line.startswith("#"))
    return float(values.get(name, 0.0))


async def topic_size(kafka, topic: str, partitions: int = 6) -> int:
    consumer = make_consumer(kafka, group_id=None)
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in range(partitions)])
        return sum(ends.values())
    finally:
        await consumer.stop()


async def test_snapshots_equal_batch_recomputation_through_three_kill_9s(kafka, topics, worker, tmp_path):
    raw = [e for e, _ in generate(GeneratorConfig(seed=7, users=1500, events=50_000))]
    events = envelopes(raw)
    await send(kafka, topics["events"], events)
    w = worker()
    w.start()
    for k in range(3):
        target = (k + 1) * len(events) // 4
        await eventually(lambda: topic_size(kafka, topics["features"]), target, 600, f"{target} snapshots")
        w.kill()  # SIGKILL: no commit, no flush, no clean shutdown
        w.start()
    probe_users = sorted({e["user_id"] for e in raw})[:200]
    probes = envelopes([{**raw[-1], "event_id": f"probe-{u}", "user_id": u, "ts": "2026-01-02T12:00:00Z"}
                        for u in probe_users])
    await send(kafka, topics["events"], probes)
    all_events = events + probes
    records = await read_topic(kafka, topics["features"], until=covers(all_events), timeout_s=600)
    records += await read_topic(kafka, topics["features"], idle_s=3)  # late duplicates, if any
    wait_until(lambda: metric(w, "loopline_features_lag_records") == 0, 60, "the worker's lag to reach 0")
    w.stop()
    expected = check_snapshots(records, all_events)
    # the offline store holds every event and snapshot once its reader dedups
    from shared.offline import open_store
    store = open_store(str(tmp_path / "offline"), FRAUD)
    wait_until(lambda: len(store.read("snapshots")) == len(all_events), 60, "offline snapshots")
    offline = store.read("snapshots")
    assert offline["event_id"].is_unique and offline["occurred_at"].is_monotonic_increasing
    row = offline.set_index("event_id").loc[f"probe-{probe_users[0]}"]
    assert row["user_id"] == probe_users[0]
    assert row["txn_count_1h"] == expected[f"probe-{probe_users[0]}"]["txn_count_1h"]


async def eventually(measure, at_least: int, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while (value := await measure()) < at_least:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: {value} < {at_least} after {timeout}s")
        await asyncio.sleep(0.3)


async def test_two_workers_share_partitions_and_take_over_without_loss(kafka, topics, worker):
    raw = [e for e, _ in generate(GeneratorConfig(seed=11, users=400, events=12_000))]
    events = envelopes(raw)
    a, b = worker("a"), worker("b")
    a.start()
    b.start()
    wait_until(lambda: _assigned(a) + _assigned(b) == 6, 180, "the 6 event partitions split across both workers")
    assert _assigned(a) > 0 and _assigned(b) > 0
    await send(kafka, topics["events"], events[:6000])
    await eventually(lambda: topic_size(kafka, topics["features"]), 3000, 300, "half the snapshots")
    a.stop()  # B takes A's partitions
    await send(kafka, topics["events"], events[6000:])
    records = await read_topic(kafka, topics["features"], until=covers(events), timeout_s=600)
    records += await read_topic(kafka, topics["features"], idle_s=3)
    b.stop()
    check_snapshots(records, events)


def _assigned(w: ServiceProcess) -> int:
    """Partitions of the events topic assigned to a worker."""
    try:
        return int(httpx.get(f"{w.url}/readyz", timeout=2).json()["assigned"]["features"])
    except (httpx.HTTPError, ValueError, KeyError):
        return 0


def same_partition_ids(target: str, n: int, prefix: str) -> list[str]:
    """Event ids whose join partition equals that of `target` (so they advance its stream time)."""
    want = (murmur2(target.encode()) & 0x7FFFFFFF) % 6
    return list(itertools.islice((f"{prefix}{i}" for i in itertools.count()
                                  if (murmur2(f"{prefix}{i}".encode()) & 0x7FFFFFFF) % 6 == want), n))


async def test_labels_early_late_twice_never_and_late_events(kafka, topics, worker):
    def ev(eid: str, user: str, ts: str) -> dict:
        return txn(event_id=eid, user_id=user, ts=ts)

    async def send_labels(labels):
        await send(kafka, topics["labels"], labels)

    w = worker().start()
    # early: the label comes before its event
    await send_labels([label("early", True, "2026-03-01T10:00:00Z")])
    time.sleep(1)
    await send(kafka, topics["events"], envelopes([
        ev("early", "a", "2026-03-01T09:00:00Z"),
        ev("twice", "a", "2026-03-01T09:05:00Z"),
        ev("late-label", "b", "2026-03-01T09:00:00Z"),
        ev("never", "c", "2026-03-01T09:00:00Z"),
        ev("conflict", "d", "2026-03-01T09:00:00Z"),
    ]))
    time.sleep(1)
    await send_labels([
        label("twice", False, "2026-03-02T00:00:00Z"),
        label("twice", False, "2026-03-02T01:00:00Z"),  # same label again: one example
        label("late-label", True, "2026-03-09T09:00:01Z"),  # beyond the 7-day max delay
        label("conflict", True, "2026-03-01T12:00:00Z"),
        label("conflict", False, "2026-03-01T13:00:00Z"),  # contradicts the first: dead-lettered
    ])
    # late event: 1 h behind entity a's newest event, allowed lateness is 5 min
    await send(kafka, topics["events"], envelopes([ev("too-late", "a", "2026-03-01T08:00:00Z"),
                                                    ev("before", "e", "2026-03-01T09:00:00Z")]))
    time.sleep(1)
    await send_labels([label("before", True, "2026-03-01T08:59:59Z")])  # observed before its event
    # Advance the label clock on the join partition of "never" by more than 7 days: the clock is the
    # second-largest label time seen there, so it takes two labels (of events never sent).
    ticks = same_partition_ids("never", 2, "tick-")
    await send_labels([label(ticks[0], True, "2026-03-20T00:00:00Z"), label(ticks[1], True, "2026-03-20T00:00:01Z")])

    examples = await read_topic(kafka, topics["training-examples"], expect=3, timeout_s=180)
    examples += await read_topic(kafka, topics["training-examples"], idle_s=3)  # redeliveries, if any
    by_id = {}
    for r in examples:
        ex = wire(r.value, TrainingExample)
        by_id.setdefault(ex["event_id"], []).append(ex)
    assert set(by_id) == {"early", "twice", "conflict"}
    assert {eid: exs[0]["label"] for eid, exs in by_id.items()} == {"early": True, "twice": False, "conflict": True}
    assert all(ex == exs[0] for exs in by_id.values() for ex in exs)  # redeliveries identical
    twice = by_id["twice"][0]
    assert twice["features"]["txn_count_10m"] == 1 and twice["entity"] == "a"  # saw "early" 5 min before
    assert twice["labelled_at"] == "2026-03-02T00:00:00Z"
    # every accepted event's snapshot, keyed by its id for the join ("too-late" was not accepted)
    by_event = await read_topic(kafka, topics["snapshots.by-event"], idle_s=3)
    snapshots = {r.key: wire(r.value, FeatureSnapshot) for r in by_event}
    assert set(snapshots) == {b"early", b"twice", b"late-label", b"never", b"conflict", b"before"}
    assert all(snap["event_id"].encode() == key for key, snap in snapshots.items())

    dlq = await read_topic(kafka, topics["events.dlq"], expect=5, timeout_s=180)
    reasons = {header_dict(r.headers)["dlq.error.code"]: (r, header_dict(r.headers)) for r in dlq}
    assert set(reasons) == {"late", "late_label", "conflict", "label_before_event", "unlabelled"}
    late_rec, late_h = reasons["late"]
    assert loads(late_rec.value)["event_id"] == "too-late" and late_h["dlq.source.topic"] == topics["events"]
    assert late_h["dlq.error.class"] == "LateEvent"
    never_rec, never_h = reasons["unlabelled"]
    assert wire(never_rec.value, FeatureSnapshot)["event_id"] == "never" and never_rec.key == b"never"
    assert never_h["dlq.source.topic"] == topics["snapshots.by-event"] and "max delay" in never_h["dlq.error.message"]
    assert loads(reasons["label_before_event"][0].value)["target_event_id"] == "before"
    assert "allowed lateness is 300s" in late_h["dlq.error.message"]
    assert "max delay" in reasons["late_label"][1]["dlq.error.message"]
    assert "first label stands" in reasons["conflict"][1]["dlq.error.message"]

    wait_until(lambda: metric(w, 'loopline_features_join_expired_total{kind="snapshot"}') >= 1, 120,
               "the never-labelled snapshot to expire")
    assert metric(w, 'loopline_features_late_events_total') == 1
    assert metric(w, 'loopline_features_labels_total{outcome="duplicate"}') == 1
    w.stop()
