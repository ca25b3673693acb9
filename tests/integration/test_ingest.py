"""Ingest against the real broker, run as a real process."""
from __future__ import annotations

import signal
import threading
import time

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from shared.events import Event, Label, derived_event_id
from shared.kafka import header_dict
from shared.serialization import dumps, loads
from tests.data import fraud_text, label, txn, wire
from tests.support import ServiceProcess, free_port, produce, read_topic, wait_until

pytestmark = pytest.mark.integration


def event_ids(records) -> list[str]:
    """The ids of `Event` records read from a topic, each checked against the model."""
    return [wire(r.value, Event)["event_id"] for r in records]


@pytest.fixture
def ingest(service_env, topics, tmp_path):
    svc = ServiceProcess("services.ingest", {**service_env, "INGEST_PORT": str(port := free_port()),
                                              "INGEST_MAX_BODY_BYTES": "65536", "INGEST_MAX_BATCH_EVENTS": "200"},
                         port=port, log_dir=tmp_path).start()
    yield svc
    svc.stop()


async def test_http_events_and_labels_reach_kafka_with_keys_and_payloads(ingest, kafka, topics):
    r = httpx.post(f"{ingest.url}/v1/events", json=[txn(i) for i in range(100)])
    assert r.status_code == 202, r.text
    assert r.json()["accepted"] == 100 and r.json()["event_ids"] == [f"ev-{i}" for i in range(100)]
    ndjson = b"\n".join(dumps(txn(i)) for i in range(100, 110))
    r = httpx.post(f"{ingest.url}/v1/events", content=ndjson, headers={"content-type": "application/x-ndjson"})
    assert r.status_code == 202 and r.json()["accepted"] == 10
    r = httpx.post(f"{ingest.url}/v1/events", json=txn(110, event_id=None))
    assert r.status_code == 202
    generated_id = r.json()["event_ids"][0]

    records = await read_topic(kafka, topics["events"], expect=111)
    assert len(records) == 111
    events = {ev["event_id"]: (r.key, ev) for r in records for ev in [wire(r.value, Event)]}
    assert set(events) == {f"ev-{i}" for i in range(110)} | {generated_id}
    key, ev = events["ev-15"]
    assert key == b"u1" and ev["entity"] == "u1" and ev["source"] == "http" and ev["type"] == "transaction"
    assert ev["data"] == txn(15, event_id=None) | {"amount": 17.5}
    assert ev["occurred_at"] == "2026-11-26T10:00:15Z"
    # one partition per entity keeps an entity's events in order
    by_user = {}
    for r in records:
        by_user.setdefault(r.key, set()).add(r.partition)
    assert all(len(p) == 1 for p in by_user.values())

    r = httpx.post(f"{ingest.url}/v1/labels", json=[{"event_id": "ev-1", "value": True},
                                                      {"event_id": "ev-2", "value": 0}])
    assert r.status_code == 202
    labels = [wire(r.value, Label) for r in await read_topic(kafka, topics["labels"], expect=2)]
    assert sorted((lb["target_event_id"], lb["value"]) for lb in labels) == [("ev-1", True), ("ev-2", False)]

    metrics = httpx.get(f"{ingest.url}/metrics").text
    assert 'loopline_ingest_accepted_total{kind="event",source="http"} 111.0' in metrics
    assert 'loopline_ingest_accepted_total{kind="label",source="http"} 2.0' in metrics


async def test_bad_input_gets_clear_errors_and_good_events_still_land(ingest, kafka, topics):
    batch = [txn(0), txn(1, amount=-3), txn(2, colour="red"), txn(3)]
    r = httpx.post(f"{ingest.url}/v1/events", json=batch)
    assert r.status_code == 207
    body = r.json()
    assert body["accepted"] == 2 and body["event_ids"] == ["ev-0", "ev-3"]
    assert [(x["index"], x["field"], x["code"]) for x in body["rejected"]] == [
        (1, "amount", "out_of_range"), (2, "colour", "unknown_field")]
    assert "greater than or equal to 0" in body["rejected"][0]["reason"]

    r = httpx.post(f"{ingest.url}/v1/events", json=[txn(4, ts="noon")])
    assert r.status_code == 422 and r.json()["rejected"][0]["field"] == "ts"
    r = httpx.post(f"{ingest.url}/v1/events", content=b'[{"amount": NaN}]', headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["detail"]
    r = httpx.post(f"{ingest.url}/v1/events", content=b"x" * 70000, headers={"content-type": "application/json"})
    assert r.status_code == 413
    # no Content-Length (chunked): the limit still holds
    r = httpx.post(f"{ingest.url}/v1/events", content=iter([b"[" + b" " * 40000, b" " * 40000 + b"]"]),
                   headers={"content-type": "application/json"})
    assert r.status_code == 413
    r = httpx.post(f"{ingest.url}/v1/events", json=[txn(i) for i in range(201)])
    assert r.status_code == 413 and "limit is 200" in r.json()["detail"]
    r = httpx.post(f"{ingest.url}/v1/events", content=b"a,b", headers={"content-type": "text/csv"})
    assert r.status_code == 415

    records = await read_topic(kafka, topics["events"], idle_s=2)
    assert sorted(event_ids(records)) == ["ev-0", "ev-3"]
    metrics = httpx.get(f"{ingest.url}/metrics").text
    assert 'loopline_ingest_rejected_total{kind="event",reason="out_of_range",source="http"} 1.0' in metrics


async def test_direct_kafka_producers_good_to_events_bad_to_dead_letters(ingest, kafka, topics):
    producer = AIOKafkaProducer(**kafka.client_kwargs(), acks="all")
    await producer.start()
    sent = []
    try:
        for i in range(50):
            md = await producer.send_and_wait(topics["events.raw"], dumps(txn(1000 + i)), key=b"k")
            sent.append(md)
        # the same record without an event_id twice: ingest derives each copy's id from where it is
        no_id = [await producer.send_and_wait(topics["events.raw"], dumps(txn(2000, event_id=None)), key=b"k")
                 for _ in range(2)]
        bad1 = await producer.send_and_wait(topics["events.raw"], b"{not json", key=b"b1",
                                            headers=[("trace", b"abc")])
        bad2 = await producer.send_and_wait(topics["events.raw"], dumps(txn(3000, channel="fax")), key=b"b2")
        await producer.send_and_wait(topics["labels.raw"], dumps({"event_id": "ev-1000", "value": 1}))
        bad3 = await producer.send_and_wait(topics["labels.raw"], dumps({"event_id": "ev-1000", "value": 7}))
    finally:
        await producer.stop()

    events = await read_topic(kafka, topics["events"], expect=52)
    ids = event_ids(events)
    named = {f"ev-{1000 + i}" for i in range(50)}
    assert len(ids) == 52 and named <= set(ids)
    derived = [derived_event_id(topics["events.raw"], md.partition, md.offset) for md in no_id]
    assert sorted(set(ids) - named) == sorted(derived) and derived[0] != derived[1]
    assert all(wire(r.value, Event)["source"] == "kafka" for r in events)

    dlq = await read_topic(kafka, topics["events.dlq"], expect=3)
    by_key = {r.key: r for r in dlq}
    assert set(by_key) == {b"b1", b"b2", None}
    h1 = header_dict(by_key[b"b1"].headers)
    assert by_key[b"b1"].value == b"{not json"
    assert h1["dlq.source.topic"] == topics["events.raw"]
    assert (h1["dlq.source.partition"], h1["dlq.source.offset"]) == (str(bad1.partition), str(bad1.offset))
    assert h1["dlq.error.class"] == "ValidationFailed" and h1["dlq.error.code"] == "invalid_json"
    assert "not valid JSON" in h1["dlq.error.message"] and h1["trace"] == "abc"
    h2 = header_dict(by_key[b"b2"].headers)
    assert h2["dlq.error.code"] == "not_allowed_value" and h2["dlq.error.message"].startswith("channel:")
    assert h2["dlq.source.offset"] == str(bad2.offset)
    h3 = header_dict(by_key[None].headers)
    assert h3["dlq.source.topic"] == topics["labels.raw"] and h3["dlq.source.offset"] == str(bad3.offset)

    labels = await read_topic(kafka, topics["labels"], expect=1)
    assert wire(labels[0].value, Label)["target_event_id"] == "ev-1000"


async def test_restart_mid_stream_loses_no_acknowledged_event(service_env, topics, kafka, tmp_path):
    port = free_port()
    env = {**service_env, "INGEST_PORT": str(port)}
    svc = ServiceProcess("services.ingest", env, port=port, log_dir=tmp_path).start()
    acked: list[str] = []
    stop = threading.Event()

    def sender():
        i = 0
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                batch = [txn(i + j) for j in range(20)]
                try:
                    r = client.post(f"{svc.url}/v1/events", json=batch)
                except httpx.HTTPError:
                    time.sleep(0.05)
                    continue  # not acknowledged: the client may re-send; counting only acks below
                if r.status_code == 202:
                    acked.extend(r.json()["event_ids"])
                    i += 20

    thread = threading.Thread(target=sender)
    thread.start()
    try:
        wait_until(lambda: len(acked) >= 400, 60, "first acks")
        svc.kill()  # SIGKILL in the middle of the stream
        before = len(acked)
        svc.start()
        wait_until(lambda: len(acked) >= before + 400, 60, "acks after restart")
    finally:
        stop.set()
        thread.join()
        svc.stop()
    wanted = set(acked)
    records = await read_topic(kafka, topics["events"], timeout_s=60,
                               until=lambda recs: wanted <= {loads(r.value)["event_id"] for r in recs})
    landed = set(event_ids(records))
    assert set(acked) <= landed, f"{len(set(acked) - landed)} acknowledged events missing"


async def test_bridge_restart_mid_stream_loses_no_raw_record(service_env, topics, kafka, tmp_path):
    n = 6000
    # Every tenth record has no event_id: ingest derives one from the record's topic/partition/offset,
    # so a record the restarted bridge reads again must keep the id it got the first time.
    sent = await produce(kafka, topics["events.raw"], [
        (str(i % 13).encode(), dumps(txn(i, event_id=None) if i % 10 == 0 else txn(i))) for i in range(n)])
    wanted = {f"ev-{i}" if i % 10 else derived_event_id(topics["events.raw"], md.partition, md.offset)
              for i, md in enumerate(sent)}
    port = free_port()
    svc = ServiceProcess("services.ingest", {**service_env, "INGEST_PORT": str(port)}, port=port,
                         log_dir=tmp_path)
    for _ in range(2):  # kill it twice while it is bridging
        svc.start()
        time.sleep(1.0)
        svc.kill()
    svc.start()
    try:
        records = await read_topic(kafka, topics["events"], timeout_s=120,
                                   until=lambda recs: len({loads(r.value)["event_id"] for r in recs}) >= n)
    finally:
        svc.stop()
    ids = set(event_ids(records))
    assert ids == wanted  # duplicates allowed (at-least-once), losses and new ids for a redelivery not


# ---------------------------------------------------------------- issue 9: clock, size, progress

async def test_event_times_ahead_of_the_clock_are_refused_on_http_and_dead_lettered_from_raw(
        ingest, kafka, topics):
    future = txn(0, ts="9999-12-31T23:59:59Z")
    r = httpx.post(f"{ingest.url}/v1/events", json=future)
    assert r.status_code == 422, r.text
    assert [(x["field"], x["code"]) for x in r.json()["rejected"]] == [("ts", "future")]
    r = httpx.post(f"{ingest.url}/v1/events", json=[txn(1), future])
    assert r.status_code == 207 and r.json()["event_ids"] == ["ev-1"]
    r = httpx.post(f"{ingest.url}/v1/labels", json={"event_id": "ev-1", "value": 1,
                                                    "observed_at": "2999-01-01T00:00:00Z"})
    assert r.status_code == 422 and r.json()["rejected"][0]["code"] == "future"
    assert r.json()["rejected"][0]["field"] == "observed_at"

    producer = AIOKafkaProducer(**kafka.client_kwargs(), acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topics["events.raw"], dumps(txn(2, ts="9999-12-31T23:59:59Z")), key=b"f")
        await producer.send_and_wait(topics["events.raw"], dumps(txn(3)), key=b"g")
        await producer.send_and_wait(topics["labels.raw"], dumps({"event_id": "ev-3", "value": 0,
                                                                  "observed_at": "2999-01-01T00:00:00Z"}))
    finally:
        await producer.stop()
    dlq = await read_topic(kafka, topics["events.dlq"], expect=2)
    assert sorted(header_dict(d.headers)["dlq.error.code"] for d in dlq) == ["future", "future"]
    sources = {header_dict(d.headers)["dlq.source.topic"] for d in dlq}
    assert sources == {topics["events.raw"], topics["labels.raw"]}
    events = await read_topic(kafka, topics["events"], expect=2)
    assert sorted(event_ids(events)) == ["ev-1", "ev-3"]
    assert 'loopline_ingest_rejected_total{kind="event",reason="future",source="kafka"} 1.0' in \
        httpx.get(f"{ingest.url}/metrics").text


@pytest.fixture
def unbounded_ingest(service_env, topics, tmp_path):
    """Ingest with a spec whose entity key has no max_length, so one event can outgrow Kafka's 1 MiB."""
    spec = tmp_path / "unbounded.yaml"
    spec.write_text(fraud_text(user_max_length=None))
    svc = ServiceProcess("services.ingest", {**service_env, "LOOPLINE_SPEC_PATH": str(spec),
                                              "INGEST_PORT": str(port := free_port())},
                         port=port, log_dir=tmp_path).start()
    yield svc
    svc.stop()


async def test_oversized_records_are_rejected_or_dead_lettered_and_the_bridge_goes_on(
        unbounded_ingest, kafka, topics):
    svc = unbounded_ingest
    # HTTP: an event whose record would be ~1.8 MB (the entity is in the key, `entity` and `data`) is
    # rejected on its own; before, it failed the whole request with 503.
    huge = txn(0, user_id="u" * 600_000)
    r = httpx.post(f"{svc.url}/v1/events", json=[txn(1), huge], timeout=30)
    assert r.status_code == 207, r.text
    assert r.json()["event_ids"] == ["ev-1"]
    assert [(x["index"], x["code"]) for x in r.json()["rejected"]] == [(1, "too_large")]

    # Raw: a 1,048,000-byte invalid record (the broker takes it; its dead letter with headers would not
    # fit unless cut), a valid record whose event is too large, then good records.
    big_invalid = b'{"note": "' + b"x" * (1_048_000 - 12) + b'"}'
    assert len(big_invalid) == 1_048_000
    producer = AIOKafkaProducer(**kafka.client_kwargs(), acks="all", max_request_size=2 * 1024 * 1024)
    await producer.start()
    try:
        md_big = await producer.send_and_wait(topics["events.raw"], big_invalid, key=b"k")
        md_huge = await producer.send_and_wait(topics["events.raw"], dumps(huge), key=b"k")
        for i in range(10, 20):
            await producer.send_and_wait(topics["events.raw"], dumps(txn(i)), key=b"k")
    finally:
        await producer.stop()

    events = await read_topic(kafka, topics["events"], expect=11, timeout_s=60)
    wanted = ["ev-1"] + [f"ev-{i}" for i in range(10, 20)]
    assert sorted(event_ids(events)) == sorted(wanted)
    dead = await read_topic(kafka, topics["events.dlq"], expect=2)
    dlq = {int(header_dict(d.headers)["dlq.source.offset"]): d for d in dead}
    big, too_large = dlq[md_big.offset], dlq[md_huge.offset]
    hb = header_dict(big.headers)
    assert hb["dlq.value.truncated"] == "1048000" and big.value == big_invalid[:len(big.value)]
    assert len(big.value) < len(big_invalid) and hb["dlq.error.code"] in ("missing", "unknown_field")
    ht = header_dict(too_large.headers)
    assert ht["dlq.error.code"] == "too_large"
    assert too_large.value == dumps(huge)  # 600 kB: small enough to keep whole
    assert "dlq.value.truncated" not in ht
    ready = httpx.get(f"{svc.url}/readyz")
    assert ready.status_code == 200, ready.text


async def _set_topic_config(kafka, topic: str, configs: dict[str, str]) -> None:
    admin = AIOKafkaAdminClient(**kafka.client_kwargs())
    await admin.start()
    try:
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs)])
    finally:
        await admin.close()


async def test_a_bridge_that_cannot_produce_fails_readiness_and_stops_promptly(
        service_env, topics, kafka, tmp_path):
    port = free_port()
    env = {**service_env, "INGEST_PORT": str(port), "INGEST_BRIDGE_STALL_AFTER_S": "3",
           "INGEST_PRODUCE_TIMEOUT_S": "3"}
    svc = ServiceProcess("services.ingest", env, port=port, log_dir=tmp_path).start()
    producer = AIOKafkaProducer(**kafka.client_kwargs(), acks="all")
    await producer.start()
    try:
        # `events` now refuses every record (too large for it): the bridge can only retry
        await _set_topic_config(kafka, topics["events"], {"max.message.bytes": "64"})
        await producer.send_and_wait(topics["events.raw"], dumps(txn(1)), key=b"k")
        wait_until(lambda: httpx.get(f"{svc.url}/readyz").status_code == 503, 30, "readyz 503")
        body = httpx.get(f"{svc.url}/readyz").json()
        assert body["checks"] == {"kafka": True, "raw_bridge": False}
        assert body["problems"]["raw_bridge"].startswith("producing to Kafka has failed for")
        assert httpx.get(f"{svc.url}/healthz").status_code == 200

        # fixed: the same batch goes through, nothing lost, ready again
        await _set_topic_config(kafka, topics["events"], {"max.message.bytes": "1048588"})
        events = await read_topic(kafka, topics["events"], expect=1, timeout_s=30)
        assert event_ids(events) == ["ev-1"]
        wait_until(lambda: httpx.get(f"{svc.url}/readyz").status_code == 200, 30, "readyz 200 again")

        # stuck again; SIGTERM ends the retry loop at once, and the batch stays uncommitted
        await _set_topic_config(kafka, topics["events"], {"max.message.bytes": "64"})
        await producer.send_and_wait(topics["events.raw"], dumps(txn(2)), key=b"k")
        wait_until(lambda: httpx.get(f"{svc.url}/readyz").status_code == 503, 30, "readyz 503 again")
        t0 = time.monotonic()
        assert svc.stop() == -signal.SIGTERM  # uvicorn re-raises the signal after a clean shutdown
        assert time.monotonic() - t0 < 8, f"SIGTERM took {time.monotonic() - t0:.1f} s"
        assert "did not stop cleanly" not in svc.log_path.read_text()
        await _set_topic_config(kafka, topics["events"], {"max.message.bytes": "1048588"})
        svc.start()
        events = await read_topic(kafka, topics["events"], expect=2, timeout_s=30)
        assert sorted(event_ids(events)) == ["ev-1", "ev-2"]
    finally:
        await producer.stop()
        svc.stop()


async def test_with_keys_configured_writes_need_the_events_write_scope(service_env, topics, kafka, tmp_path):
    from shared.auth import hash_key

    keys = f'["{hash_key("writer-key")}:events:write", "{hash_key("reader-key")}:predict"]'
    svc = ServiceProcess("services.ingest", {**service_env, "INGEST_PORT": str(port := free_port()),
                                              "INGEST_API_KEYS": keys}, port=port, log_dir=tmp_path).start()
    try:
        assert httpx.post(f"{svc.url}/v1/events", json=txn(1)).status_code == 401
        assert httpx.post(f"{svc.url}/v1/events", json=txn(2), headers={"x-api-key": "reader-key"}).status_code == 403
        assert httpx.post(f"{svc.url}/v1/labels", json=label("ev-1"), headers={"x-api-key": "nope"}).status_code == 403
        r = httpx.post(f"{svc.url}/v1/events", json=txn(3), headers={"authorization": "Bearer writer-key"})
        assert r.status_code == 202 and r.json()["event_ids"] == ["ev-3"]
        assert httpx.get(f"{svc.url}/readyz").status_code == 200  # operations stay open
        assert [wire(r.value, Event)["event_id"] for r in await read_topic(kafka, topics["events"], expect=1)] == ["ev-3"]
    finally:
        svc.stop()
