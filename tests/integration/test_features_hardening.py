"""The feature worker against inputs other than the fraud example's happy path: a global stream with
a busy window, history sent faster than real time, a far-future event, malformed and oversized
records. Real broker, real worker processes."""
from __future__ import annotations

import random
import signal
import time
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from shared.events import EventValidator, FeatureSnapshot, TrainingExample
from shared.kafka import ensure_topics, header_dict
from shared.serialization import dumps, loads
from shared.settings import KafkaSettings
from shared.spec import parse_spec
from shared.topics import Topics
from tests.data import envelope, iso, keyed, label, txn, wire
from tests.support import Broker, ServiceProcess, free_port, produce, read_topic, wait_until

pytestmark = pytest.mark.integration

GLOBAL_SPEC = """
name: sensor
event:
  time_field: ts
  fields:
    reading: {type: float}
    kind: {type: category, values: [a, b, c]}
    note: {type: string, required: false}
    ts: {type: timestamp}
label: {name: alarm, type: binary, max_delay: 1h}
metrics: {primary: roc_auc}
features:
  allowed_lateness: 1m
  definitions:
    - {name: n_24h, agg: count, window: 24h}
    - {name: reading_sum_24h, agg: sum, field: reading, window: 24h}
    - {name: reading_max_24h, agg: max, field: reading, window: 24h}
    - {name: kind_distinct_1h, agg: distinct, field: kind, window: 1h}
    - {name: last_reading, agg: last, field: reading}
"""

COURIER_SPEC = """
name: courier
entity: {key: courier_id}
event:
  time_field: ts
  fields:
    courier_id: {type: string, max_length: 32}
    distance_km: {type: float, min: 0}
    ts: {type: timestamp}
label: {name: minutes, type: regression, max_delay: 3h}
metrics: {primary: mae, minimum: 15}
features:
  allowed_lateness: 5m
  definitions:
    - {name: trips_1h, agg: count, window: 1h}
    - {name: distance_mean_3h, agg: mean, field: distance_km, window: 3h}
"""
SENSOR = EventValidator(parse_spec(GLOBAL_SPEC))
COURIER = EventValidator(parse_spec(COURIER_SPEC))


def event(validator: EventValidator, fields: dict, event_id: str) -> tuple[bytes, bytes]:
    """(key, value) of the `Event` record of raw `fields` under `validator`'s spec."""
    return keyed(envelope(fields, validator, event_id=event_id))


async def test_a_global_stream_with_a_busy_window_is_exact_and_its_records_stay_small(kafka, topics, worker):
    """40,000 events of one global stream inside one 24 h window: the old one-record state passed
    Kafka's 1 MiB limit at ~30,000 and crash-looped the worker."""
    rng = random.Random(5)
    start = datetime(2026, 5, 1, tzinfo=timezone.utc)
    n = 40_000
    readings = [round(rng.uniform(0, 100), 3) for _ in range(n)]
    items = [event(SENSOR, {"reading": readings[i], "kind": "abc"[i % 3],
                            "ts": iso(start + timedelta(seconds=2 * i))}, f"g{i}") for i in range(n)]
    await produce(kafka, topics["events"], items)
    w = worker(spec_yaml=GLOBAL_SPEC, FEATURES_OFFLINE="false").start()
    snaps = await read_topic(kafka, topics["features"], expect=n, timeout_s=600)
    by_id = {}
    for r in snaps:
        snap = wire(r.value, FeatureSnapshot)
        by_id.setdefault(snap["event_id"], snap["features"])
    assert len(by_id) == n
    for i in (0, 1, 2, 999, 20_000, n - 1):
        f = by_id[f"g{i}"]
        assert f["n_24h"] == i and f["last_reading"] == (readings[i - 1] if i else None)
        assert f["reading_max_24h"] == (max(readings[:i]) if i else None)
        assert f["reading_sum_24h"] == pytest.approx(sum(readings[:i]), rel=1e-12)
        assert f["kind_distinct_1h"] == min(i, 3)
    w.stop()
    changelog = topics.changelog(topics.group("features", "defs-" + SENSOR.spec.feature_hash()), "entity-state")
    sizes = [len(r.value or b"") for r in await read_topic(kafka, changelog, idle_s=3)]
    assert len(sizes) > n and max(sizes) < 4000  # a seen record per event, heads (<= 31 events), chunks
    log = w.log_path.read_text(errors="replace")
    assert "MessageSizeTooLarge" not in log and "Traceback" not in log


async def test_backfill_sent_faster_than_real_time_loses_no_example(kafka, topics, worker):
    """10 h of a courier example (3,000 events, 50 couriers), all events first, then every label
    13-49 min after its event (within the 3 h max delay): every event gets its training example and
    nothing is dead-lettered, however far the snapshots ran ahead of the labels."""
    rng = random.Random(9)
    start = datetime(2026, 2, 1, 6, tzinfo=timezone.utc)
    events, labels = [], []
    for i in range(3000):
        t = start + timedelta(seconds=12 * i)
        events.append(event(COURIER, {"courier_id": f"c{rng.randrange(50)}",
                                      "distance_km": rng.uniform(0.5, 9), "ts": iso(t)}, f"trip-{i}"))
        labels.append((t + timedelta(minutes=rng.uniform(13, 49)), f"trip-{i}", round(rng.uniform(5, 60), 1)))
    labels.sort()
    w = worker(spec_yaml=COURIER_SPEC, FEATURES_OFFLINE="false").start()
    await produce(kafka, topics["events"], events)
    await read_topic(kafka, topics["features"], expect=3000, timeout_s=300)
    await produce(kafka, topics["labels"], [keyed(label(eid, value, at, source="replay"))
                                            for at, eid, value in labels])
    examples = await read_topic(kafka, topics["training-examples"], expect=3000, timeout_s=300)
    got = {ex["event_id"]: ex["label"] for r in examples for ex in [wire(r.value, TrainingExample)]}
    assert got == {eid: value for _, eid, value in labels}
    assert await read_topic(kafka, topics["events.dlq"], idle_s=3) == []
    w.stop()


async def test_a_far_future_event_is_dead_lettered_and_the_join_goes_on(kafka, topics, worker):
    w = worker(spec_yaml=COURIER_SPEC, FEATURES_OFFLINE="false").start()
    start = datetime(2026, 2, 1, 6, tzinfo=timezone.utc)
    future = event(COURIER, {"courier_id": "c1", "distance_km": 1.0, "ts": "9999-12-31T23:59:59Z"}, "far")
    events = [event(COURIER, {"courier_id": f"c{i % 7}", "distance_km": 2.0,
                              "ts": iso(start + timedelta(minutes=i))}, f"e{i}") for i in range(120)]
    await produce(kafka, topics["events"], [future, *events])
    await read_topic(kafka, topics["features"], expect=120, timeout_s=180)
    await produce(kafka, topics["labels"], [
        keyed(label(f"e{i}", 10.0, start + timedelta(minutes=i + 20), source="replay")) for i in range(120)])
    examples = await read_topic(kafka, topics["training-examples"], expect=120, timeout_s=180)
    assert {wire(r.value, TrainingExample)["event_id"] for r in examples} == {f"e{i}" for i in range(120)}
    dlq = await read_topic(kafka, topics["events.dlq"], expect=1, timeout_s=60)
    assert [header_dict(r.headers)["dlq.error.code"] for r in dlq] == ["future"]
    assert loads(dlq[0].value)["event_id"] == "far"
    w.stop()


async def test_malformed_and_oversized_records_are_dead_lettered_and_the_worker_goes_on(kafka, topics, worker):
    w = worker(spec_yaml=GLOBAL_SPEC, FEATURES_OFFLINE="false").start()
    good = [event(SENSOR, {"reading": 1.0, "kind": "a", "ts": f"2026-05-01T00:00:{i:02d}Z"}, f"ok{i}")
            for i in range(10)]
    wrong_kind = loads(good[0][1])
    wrong_kind.update(event_id="bad-kind", data={**wrong_kind["data"], "kind": "zzz"})
    no_time = loads(good[0][1])
    no_time.update(event_id="no-time", data={"reading": 1.0, "kind": "a"})
    huge = loads(good[0][1])
    huge.update(event_id="huge", data={**huge["data"], "note": "x" * 950_000})
    bad = [(b"__global__", b"not json"), (b"__global__", b"[1, 2]"), (b"__global__", dumps({"event_id": "x"})),
           (b"__global__", dumps(wrong_kind)), (b"__global__", dumps(no_time)), (b"__global__", dumps(huge))]
    await produce(kafka, topics["events"], good[:5] + bad + good[5:])
    snaps = await read_topic(kafka, topics["features"], expect=10, timeout_s=120)
    assert [wire(r.value, FeatureSnapshot)["event_id"] for r in snaps] == [f"ok{i}" for i in range(10)]
    assert wire(snaps[-1].value, FeatureSnapshot)["features"]["n_24h"] == 9
    dlq = await read_topic(kafka, topics["events.dlq"], expect=6, timeout_s=60)
    codes = [header_dict(r.headers)["dlq.error.code"] for r in dlq]
    assert codes == ["invalid_json", "invalid", "invalid", "invalid", "invalid", "too_large"]
    assert dlq[0].value == b"not json" and dlq[3].value == bad[3][1]
    assert header_dict(dlq[5].headers)["dlq.value.truncated"] == str(len(bad[5][1]))
    assert "kind" in header_dict(dlq[3].headers)["dlq.error.message"]
    w.stop()


@pytest.fixture
def own_broker():
    b = Broker().start()
    yield b
    b.resume()
    b.destroy()


async def test_a_worker_whose_broker_hangs_is_not_ready_and_stops_on_sigterm(own_broker, prefix, tmp_path):
    kafka = KafkaSettings(bootstrap_servers=own_broker.bootstrap)
    topics = Topics(prefix)
    await ensure_topics(kafka, topics)
    port = free_port()
    env = {"KAFKA_BOOTSTRAP_SERVERS": own_broker.bootstrap, "LOOPLINE_TOPIC_PREFIX": prefix,
           "KAFKA_REQUEST_TIMEOUT_MS": "3000", "FEATURES_PORT": str(port), "FEATURES_DATA_DIR": str(tmp_path / "w"),
           "FEATURES_OFFLINE": "false", "FEATURES_STALL_AFTER_S": "3", "FEATURES_SHUTDOWN_TIMEOUT_S": "8"}
    w = ServiceProcess("services.features", env, port=port, log_dir=tmp_path, ready_timeout=180).start()
    try:
        await produce(kafka, topics["events"], [
            keyed(envelope(txn(event_id=f"s{i}", user_id="u", amount=1.0, ts=f"2026-03-01T00:00:0{i}Z")))
            for i in range(5)])
        snaps = await read_topic(kafka, topics["features"], expect=5, timeout_s=60)
        assert [wire(r.value, FeatureSnapshot)["event_id"] for r in snaps] == [f"s{i}" for i in range(5)]
        own_broker.pause()
        wait_until(lambda: httpx.get(f"{w.url}/readyz", timeout=5).status_code == 503, 60, "readyz 503")
        assert httpx.get(f"{w.url}/healthz", timeout=5).status_code == 200
        started = time.monotonic()
        w.proc.send_signal(signal.SIGTERM)
        w.proc.wait(timeout=30)  # raises if the worker is still alive: it hung
        # FEATURES_SHUTDOWN_TIMEOUT_S=8: the process is gone 8 s after the signal at the latest
        assert time.monotonic() - started < 8 + 4
    finally:
        w.kill()
