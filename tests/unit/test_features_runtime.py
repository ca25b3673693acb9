"""services/features/runtime.py replaces a few faust-streaming methods: fail loudly when faust changes them."""
from __future__ import annotations

import asyncio
import hashlib
import importlib.metadata
import inspect
import threading

import faust
from faust.app.base import App
from faust.stores.rocksdb import Store
from faust.transport.consumer import Consumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

from mode.threads import QueueServiceThread, ServiceThread

from services.features import runtime

# sha256 (first 16 hex digits) of the faust-streaming 0.15.3 source that runtime.py replaces, copies or
# relies on (the batch path calls _wait_next_records and ack, opens RocksDB partitions, records
# persisted changelog offsets as faust's own tables do)
REVIEWED = {
    App.on_init_dependencies: "7621a70a9b01f93f",
    Consumer._drain_messages: "44a2500309e83c63",
    Consumer.getmany: "4b168d84882a70d6",
    Consumer._wait_next_records: "6218e1969a636b3f",
    Consumer.ack: "5fcf41cf45153475",
    Consumer.on_partitions_revoked: "d04b7ae72c6fc206",
    Consumer.pause_partitions: "27a1c94bdacd54de",
    Consumer.resume_partitions: "afe6b7c02a41d63c",
    Store._db_for_partition: "cb7e67d5f9efc4bc",
    Store.set_persisted_offset: "b4c811926678346e",
    AIOKafkaConsumerThread._fetch_records: "39a2c6c79fc1455a",
    # mode-streaming 0.7.1: the consumer "thread" runs on the worker's loop (runtime.ConsumerThread)
    ServiceThread.__init__: "82979878990cdff5",
    ServiceThread.start: "f11841038a033a05",
    ServiceThread._serve: "67809eae09573ac7",
    ServiceThread._gather_remaining_tasks: "6f65b92dd1012485",
    QueueServiceThread.call_thread: "479edda75b54734b",
}


def test_faust_is_the_reviewed_version():
    assert faust.__version__ == "0.15.3"
    assert importlib.metadata.version("mode-streaming") == "0.7.1"
    for fn, digest in REVIEWED.items():
        got = hashlib.sha256(inspect.getsource(fn).encode()).hexdigest()[:16]
        assert got == digest, f"{fn.__qualname__} changed in faust/mode: review services/features/runtime.py"


def test_fetch_wait_is_still_hard_coded_in_faust():
    # the reason for runtime.ConsumerThread; drop it once faust makes this configurable
    assert "fetch_max_wait_ms=1500" in inspect.getsource(AIOKafkaConsumerThread._create_worker_consumer)


def test_the_app_uses_the_patched_transport():
    app = runtime.App("runtime-test", broker="kafka://localhost:9", web_enabled=False)
    assert isinstance(app.transport, runtime.Transport)
    assert app.transport.Consumer is runtime.Consumer


def test_batch_agents_are_registered_per_topic():
    import asyncio

    app = runtime.App("runtime-test-batch", broker="kafka://localhost:9", web_enabled=False)
    topic = app.topic("t1", "t2", key_type=bytes, value_type=bytes)

    @app.batch_agent(topic)
    async def handler(batch):
        return asyncio.get_event_loop().create_future()

    assert app.batch_handlers == {"t1": handler, "t2": handler}
    assert topic in app.topics  # subscribed by faust's conductor


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

    def __init__(self):
        self.data = _Store()

    class changelog_topic:  # noqa: N801 - stands in for faust's Topic
        @staticmethod
        def get_topic_name():
            return "app-state-changelog"


def test_batch_table_keeps_writes_in_memory_until_the_batch_is_stored():
    table = runtime.BatchTable(_Table())
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
    table = runtime.BatchTable(_Table())
    db = table.table.data._db_for_partition(0)
    db.update({b"a": b"1", b"\xfe\x01": b"", b"\xfe\x02": b""})
    table.set(0, b"\xfe\x00", b"")  # unstored: not scanned
    assert [k for k, _ in table.items_from(0, b"\xfe")] == [b"\xfe\x01", b"\xfe\x02"]


async def test_the_consumer_thread_runs_on_the_workers_loop():
    app = runtime.App("runtime-test-loop", broker="kafka://localhost:9", web_enabled=False)
    thread = app.consumer._thread
    assert isinstance(thread, runtime.ConsumerThread)
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
    app = runtime.App("runtime-test-flush", broker="kafka://localhost:9", web_enabled=False)
    producer = _Producer()
    monkeypatch.setattr(runtime.App, "kafka_producer", property(lambda self: producer))
    table = app.batch_table(_Table())
    changelog = table.changelog

    def records(*keys):
        return [runtime.OutRecord(changelog, k, b"v", None, 0) for k in keys]

    first, second = app._changelog(records(b"a")), app._changelog(records(b"b", b"c"))
    assert first is second and producer.requests == []  # held for CHANGELOG_LINGER_S
    await asyncio.wait_for(first, 1)
    assert producer.requests == [(changelog, 0, [(b"a", b"v"), (b"b", b"v"), (b"c", b"v")])]
    assert table.table.data.persisted == {}  # set by send_all once the batches are stored

    monkeypatch.setattr(runtime, "CHANGELOG_FLUSH_RECORDS", 2)
    full = app._changelog(records(b"d", b"e"))  # a full flush goes out at once
    await asyncio.wait_for(full, runtime.CHANGELOG_LINGER_S / 2)
    assert producer.requests[1] == (changelog, 0, [(b"d", b"v"), (b"e", b"v")])


async def test_a_batch_is_stored_locally_only_after_its_changelog_is_acknowledged(monkeypatch):
    """The local store is never ahead of the changelog: after a kill -9, recovery replays the
    changelog from the persisted offset over the local store, and an entity's records written by a
    later, unacknowledged batch would otherwise mix with older ones (a head naming a deleted chunk)."""
    app = runtime.App("runtime-test-order", broker="kafka://localhost:9", web_enabled=False)
    producer = _Producer()
    monkeypatch.setattr(runtime.App, "kafka_producer", property(lambda self: producer))
    table = app.batch_table(_Table())
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
    done = await app.send_all([runtime.OutRecord("out", b"k", b"x", None, 0)])
    await asyncio.sleep(runtime.CHANGELOG_LINGER_S * 2)
    assert sent and db == {} and not done.done()  # output acknowledged, changelog not yet: nothing stored
    gate.set_result(None)
    await asyncio.wait_for(done, 1)
    assert db == {b"k": b"v"}
    # recovery may start at the flush's first record only now that its batch is stored
    assert table.table.data.persisted == {runtime.TP(table.changelog, 0): 102}


async def _after(gate, fut):
    await gate
    return await fut


def test_changelog_records_follow_each_keys_last_write():
    """A crash may cut a changelog flush short: what is written must be a prefix of what the handler
    wrote, in its order (an entity's head after the records it names), so a rewritten key moves last."""
    table = runtime.BatchTable(_Table())
    table.set(0, b"head", b"1")
    table.set(0, b"seen", b"x")
    table.set(0, b"head", b"2")
    table.delete(0, b"old")
    assert [(r.key, r.value) for r in table.changelog_records(table.take_batch())] == [
        (b"seen", b"x"), (b"head", b"2"), (b"old", None)]
