"""shared.stream replaces or relies on faust-streaming, mode-streaming, aiokafka and uvicorn internals:
fail loudly when any of them changes, and check the runtime's own ordering rules without a broker."""
from __future__ import annotations

import asyncio
import hashlib
import importlib.metadata
import inspect
import threading

import aiokafka
import faust
import uvicorn
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from faust.app.base import App
from faust.assignor.leader_assignor import LeaderAssignor
from faust.stores.rocksdb import Store
from faust.transport.consumer import Consumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaDriverConsumer
from faust.transport.drivers.aiokafka import Producer as AIOKafkaDriverProducer
from mode.threads import QueueServiceThread, ServiceThread
from mode.worker import Worker
from prometheus_client import CollectorRegistry

from shared.stream import app as runtime_app
from shared.stream import delivery, tables
from shared.kafka import OutRecord
from shared.settings import KafkaSettings
from shared.stream.delivery import TP
from shared.stream.settings import StreamSettings

# sha256 (first 16 hex digits) of the source of every method shared.stream replaces, copies, wraps or
# relies on, as reviewed with faust-streaming 0.15.3, mode-streaming 0.7.1, aiokafka 0.14.0, uvicorn 0.54.0.
REVIEWED = {
    # batch delivery (delivery.Consumer): copies getmany/_drain_messages, calls _wait_next_records and
    # _add_gap, does ack's bookkeeping per batch (_ack_offsets); wraps revocation, assignment and pausing
    App.on_init_dependencies: "7621a70a9b01f93f",
    App._new_transport: "42db531312dd776f",
    Consumer._drain_messages: "44a2500309e83c63",
    Consumer.getmany: "4b168d84882a70d6",
    Consumer._wait_next_records: "6218e1969a636b3f",
    Consumer.ack: "5fcf41cf45153475",
    Consumer.on_partitions_revoked: "d04b7ae72c6fc206",
    Consumer.on_partitions_assigned: "29ce96596f05a18c",
    Consumer.pause_partitions: "27a1c94bdacd54de",
    Consumer.resume_partitions: "afe6b7c02a41d63c",
    Consumer._add_gap: "4df2573ded7c1c2c",
    AIOKafkaDriverConsumer._new_consumer_thread: "0870ec53dea75083",
    AIOKafkaConsumerThread._fetch_records: "39a2c6c79fc1455a",
    AIOKafkaConsumerThread._create_worker_consumer: "c2701bfc3e6f6cad",
    AIOKafkaDriverProducer.flush: "36d0cb3615f65b01",
    LeaderAssignor.on_start: "66bcb65ad54b5f52",  # topic_disable_leader: no leader topic
    # tables: partition databases and the persisted changelog offset, as faust's own tables use them
    Store._db_for_partition: "cb7e67d5f9efc4bc",
    Store.set_persisted_offset: "b4c811926678346e",
    # the consumer "thread" on the worker's loop (delivery.ConsumerThread)
    ServiceThread.__init__: "82979878990cdff5",
    ServiceThread.start: "f11841038a033a05",
    ServiceThread._serve: "67809eae09573ac7",
    ServiceThread._gather_remaining_tasks: "6f65b92dd1012485",
    QueueServiceThread.call_thread: "479edda75b54734b",
    Worker._schedule_shutdown: "1a6a5dfc88c2298b",  # worker.Worker: the hard exit after a signal
    Worker._setup_logging: "5b69bd16b1eff67e",  # worker.Worker: logging is configured once, by run()
    # aiokafka: the fetch wait read at start; the batch API the streams produce through
    AIOKafkaConsumer.start: "2f1ba70443327538",
    AIOKafkaProducer.send_batch: "bf42b0f0c5c0646d",
    AIOKafkaProducer.create_batch: "c4efda4bb7a09741",
    # uvicorn: serve() wraps capture_signals, which the embedded server replaces
    uvicorn.Server.serve: "112ef41af52167e3",
}

# attributes (not methods) the runtime reads or sets on those libraries' objects
ATTRIBUTES = {
    Consumer: ["_read_offset", "_buffered_partitions", "_paused_partitions", "_commit_every", "_n_acked",
               "_stopped", "callback", "flow_active", "suspend_flow", "perform_seek", "wait_first",
               "_to_message", "consumer_stopped_errors", "diag", "should_stop", "commit", "sleep",
               "_committed_offset", "_acked_index", "_acked", "_waiting_for_ack"],
    App: ["consumer_generation_id", "in_recovery", "rebalancing", "on_partitions_revoked", "task", "Table"],
}


def test_the_libraries_are_the_reviewed_versions():
    assert faust.__version__ == "0.15.3"
    assert importlib.metadata.version("mode-streaming") == "0.7.1"
    assert aiokafka.__version__ == "0.14.0"
    assert uvicorn.__version__ == "0.54.0"
    for fn, digest in REVIEWED.items():
        got = hashlib.sha256(inspect.getsource(fn).encode()).hexdigest()[:16]
        assert got == digest, f"{fn.__qualname__} changed upstream: review shared/stream"


def test_the_attributes_relied_on_exist():
    app = runtime_app.StreamApp("tripwire", "v1", StreamSettings(), CollectorRegistry())
    consumer = app.consumer
    for cls, names in ATTRIBUTES.items():
        obj = consumer if cls is Consumer else app
        missing = [n for n in names if not hasattr(obj, n)]
        assert not missing, f"{cls.__qualname__} lost {missing}: review shared/stream"
    assert "_fetch_max_wait_ms" in inspect.getsource(AIOKafkaConsumer.__init__)
    assert "self._fetch_max_wait_ms" in inspect.getsource(AIOKafkaConsumer.start)


def test_fetch_wait_is_still_hard_coded_in_faust():
    # the reason for delivery.ConsumerThread; drop it once faust makes this configurable
    assert "fetch_max_wait_ms=1500" in inspect.getsource(AIOKafkaConsumerThread._create_worker_consumer)


def _app(name: str) -> runtime_app.StreamApp:
    settings = StreamSettings(kafka=KafkaSettings(bootstrap_servers="localhost:9"))
    return runtime_app.StreamApp(name, "v1", settings, CollectorRegistry())


def test_the_app_uses_the_patched_transport_and_serves_no_faust_web():
    app = _app("runtime-test")
    assert isinstance(app.transport, delivery.Transport)
    assert app.transport.Consumer is delivery.Consumer and app.transport.Producer is delivery.Producer
    assert app.conf.web_enabled is False and app.conf.topic_disable_leader is True


def test_streams_are_registered_per_topic_and_tables_named_in_the_catalogue():
    app = _app("runtime-test-batch")
    table = app.table("state", partitions=3)
    app.stream("s", ["t1", "t2"], lambda batch, tables: [], tables=[table])
    assert set(app.batch_handlers) == {"t1", "t2"} and app.source_topics() == ["t1", "t2"]
    assert any(set(t.topics) == {"t1", "t2"} for t in app.topics)  # subscribed by faust's conductor
    changelog = app.topic_names.changelog(app.conf.id, "state")
    assert app.runtime_topics() == {changelog: 3} and table.changelog == changelog
    assert app.topic_names.spec_of(changelog).name == "stream.changelog"


class _Db(dict):
    def items(self, from_key=b""):  # rocksdict's signature: entries in key order from `from_key`
        return sorted((k, v) for k, v in super().items() if k >= from_key)


class _Store:
    offset_key = b"__faust\0offset__"

    def __init__(self):
        self.dbs: dict[int, _Db] = {}
        self.persisted: dict = {}

    def _db_for_partition(self, partition):
        return self.dbs.setdefault(partition, _Db())

    def set_persisted_offset(self, tp, offset):
        self.persisted[tp] = offset


class _Table:
    key_type = value_type = bytes
    name = "state"

    def __init__(self):
        self.data = _Store()

    class changelog_topic:  # noqa: N801 - stands in for faust's Topic
        @staticmethod
        def get_topic_name():
            return "app-state-changelog"


def test_batch_table_keeps_writes_in_memory_until_the_batch_is_stored():
    table = tables.BatchTable(_Table())
    db = table.table.data._db_for_partition(3)
    db[b"old"] = b"stored"

    table.set(3, b"k", b"v1")
    table.delete(3, b"old")
    assert table.get(3, b"k") == b"v1" and table.get(3, b"old") is None  # reads see the batch
    assert db == {b"old": b"stored"}  # nothing stored before the batch's output is acknowledged
    first = table.take_batch()

    table.set(3, b"k", b"v2")  # the next batch writes the same key before the first is stored
    second = table.take_batch()

    records = table.changelog_records(first)
    assert [(r.topic, r.key, r.value, r.partition) for r in records] == [
        ("app-state-changelog", b"k", b"v1", 3), ("app-state-changelog", b"old", None, 3)]
    table.store(first)
    assert db == {b"k": b"v1"}
    assert table.get(3, b"k") == b"v2"  # the later, unstored write still wins

    table.store(second)
    assert db == {b"k": b"v2"} and table.get(3, b"k") == b"v2"
    assert table.take_batch() == {}


def test_batch_table_ordered_scan_of_stored_entries():
    table = tables.BatchTable(_Table())
    db = table.table.data._db_for_partition(0)
    db.update({b"a": b"1", b"\xfe\x01": b"", b"\xfe\x02": b""})
    table.set(0, b"\xfe\x00", b"")  # unstored: not scanned
    assert [k for k, _ in table.items_from(0, b"\xfe")] == [b"\xfe\x01", b"\xfe\x02"]


async def test_the_consumer_thread_runs_on_the_workers_loop():
    app = _app("runtime-test-loop")
    thread = app.consumer._thread
    assert isinstance(thread, delivery.ConsumerThread)
    assert thread.thread_loop is thread.parent_loop is asyncio.get_running_loop()

    async def where(x: int) -> tuple[int, int]:
        return threading.get_ident(), x

    # faust's calls into the consumer "thread" (fetches, commits, seeks) run inline on this loop
    assert await thread.call_thread(where, 7) == (threading.get_ident(), 7)


class _RecordBatch:
    def __init__(self):
        self.records: list[tuple[bytes, bytes]] = []

    def append(self, key, value, timestamp, headers):
        self.records.append((key, value))
        return object()  # aiokafka: metadata, None when the batch is full

    def close(self):
        pass


class _Producer:
    """aiokafka's batch API as send_batched uses it; every batch is acknowledged at once."""

    def __init__(self):
        self.requests: list[tuple[str, int, list[tuple[bytes, bytes]]]] = []

    def create_batch(self):
        return _RecordBatch()

    async def send_batch(self, batch, topic, *, partition):
        self.requests.append((topic, partition, batch.records))
        done = asyncio.get_running_loop().create_future()
        meta = {"topic": topic, "partition": partition, "offset": 100 + len(self.requests)}
        done.set_result(type("RecordMetadata", (), meta))
        return done


async def test_changelog_records_of_successive_batches_go_out_together(monkeypatch):
    app = _app("runtime-test-flush")
    producer = _Producer()
    monkeypatch.setattr(runtime_app.StreamApp, "kafka_producer", property(lambda self: producer))
    table = app.tables_by_name["state"] = tables.BatchTable(_Table())
    changelog = table.changelog

    def records(*keys):
        return [OutRecord(changelog, k, b"v", None, 0) for k in keys]

    first, second = app._changelog(records(b"a")), app._changelog(records(b"b", b"c"))
    assert first is second and producer.requests == []  # held for CHANGELOG_LINGER_S
    await asyncio.wait_for(first, 1)
    assert producer.requests == [(changelog, 0, [(b"a", b"v"), (b"b", b"v"), (b"c", b"v")])]
    assert table.table.data.persisted == {}  # set by _send once the batches are stored

    app.settings.changelog_flush_records = 2
    full = app._changelog(records(b"d", b"e"))  # a full flush goes out at once
    await asyncio.wait_for(full, app.settings.changelog_linger_s / 2)
    assert producer.requests[1] == (changelog, 0, [(b"d", b"v"), (b"e", b"v")])


async def test_a_batch_is_stored_locally_only_after_its_changelog_is_acknowledged(monkeypatch):
    """The local store is never ahead of the changelog: after a kill -9, recovery replays the
    changelog from the persisted offset over the local store, and an entity's records written by a
    later, unacknowledged batch would otherwise mix with older ones (a head naming a deleted chunk)."""
    app = _app("runtime-test-order")
    producer = _Producer()
    monkeypatch.setattr(runtime_app.StreamApp, "kafka_producer", property(lambda self: producer))
    table = app.tables_by_name["state"] = tables.BatchTable(_Table())
    db = table.table.data._db_for_partition(0)
    gate = asyncio.get_running_loop().create_future()
    sent = []
    real_changelog = app._changelog

    def held_changelog(records):
        sent.append(records)
        flushed = real_changelog(records)
        return asyncio.ensure_future(_after(gate, flushed))
    monkeypatch.setattr(app, "_changelog", held_changelog)
    table.set(0, b"k", b"v")
    done = await app._send(runtime_app.Output([OutRecord("out", b"k", b"x", None, 0)]), [table])
    await asyncio.sleep(app.settings.changelog_linger_s * 2)
    assert sent and db == {} and not done.done()  # output acknowledged, changelog not yet: nothing stored
    gate.set_result(None)
    await asyncio.wait_for(done, 1)
    assert db == {b"k": b"v"}
    # recovery may start at the flush's first record only now that its batch is stored
    assert table.table.data.persisted == {TP(table.changelog, 0): 102}


async def _after(gate, fut):
    await gate
    return await fut


def test_changelog_records_follow_each_keys_last_write():
    """A crash may cut a changelog flush short: what is written must be a prefix of what the handler
    wrote, in its order (an entity's head after the records it names), so a rewritten key moves last."""
    table = tables.BatchTable(_Table())
    table.set(0, b"head", b"1")
    table.set(0, b"seen", b"x")
    table.set(0, b"head", b"2")
    table.delete(0, b"old")
    assert [(r.key, r.value) for r in table.changelog_records(table.take_batch())] == [
        (b"seen", b"x"), (b"head", b"2"), (b"old", None)]


async def test_a_batch_with_a_hold_is_acked_only_once_the_hold_is_done(monkeypatch):
    """The trainer holds a batch until the checkpoint that covers it is published."""
    app = _app("runtime-test-hold")
    producer = _Producer()
    monkeypatch.setattr(runtime_app.StreamApp, "kafka_producer", property(lambda self: producer))
    hold = asyncio.get_running_loop().create_future()
    done = await app._send(runtime_app.Output([OutRecord("out", b"k", b"x", None, 0)], hold=hold), [])
    await asyncio.sleep(app.settings.changelog_linger_s * 3)
    assert producer.requests and not done.done()  # output sent and acknowledged, the batch still held
    hold.set_result(None)
    await asyncio.wait_for(done, 1)


async def test_emit_sends_outside_a_batch_and_waits_for_the_acks(monkeypatch):
    app = _app("runtime-test-emit")
    producer = _Producer()
    monkeypatch.setattr(runtime_app.StreamApp, "kafka_producer", property(lambda self: producer))
    await app.emit([OutRecord("models", b"m:1", b"{}", None, 0)])
    assert producer.requests == [("models", 0, [(b"m:1", b"{}")])]
