"""faust-streaming with batch delivery; `App` is a `faust.App` plus `batch_agent` and `BatchTable`.

Measured on this project's 2-core machine (README, Features): a faust agent costs ~220 µs CPU per
record before doing any work (the consumer races each delivery against a rebalance with
`wait_first`: four tasks and an `asyncio.wait`; then a channel queue, an Event, stream acks), and
a table write ~350-480 µs (`send_soon`, a FutureMessage, a producer-buffer hop, a per-record
callback writing the persisted offset). The feature worker's hot topics therefore go through
`App.batch_agent`: the consumer hands each fetch's records to the handler as one batch
(`{TopicPartition: [Message, ...]}`); the handler reads and writes `BatchTable`s by explicit
partition and hands its output to `App.send_all`, which produces it in record batches (aiokafka's
batch API), then, once the broker has acknowledged it, stores the batch's table writes in RocksDB
and queues their changelog records (sent together every 50 ms or 1,000 records). The batch's
records are acked (their offsets become committable) when all of that is acknowledged; meanwhile
the next batch is processed. What stays faust's: the consumer group, rebalances, offset tracking
and commits, table stores, changelog topics, recovery, standby replicas, the web server, timers.
Topics without a batch agent (changelogs, standbys) take faust's own per-message path unchanged.

Rebalances: batches are delivered under `Consumer.batch_lock`, which `on_partitions_revoked` takes
first and then waits for the batches in flight, so a revocation never sees acks landing after
faust has reset its offset bookkeeping (a stale ack ahead of the committed offset would be
committed as the next position and skip records). A batch fetched under an older consumer
generation is dropped without acks; faust seeks to the committed offsets after the rebalance, so
those records come again. Batches are acked in delivery order.

The aiokafka consumer runs on the worker's event loop (`ConsumerThread`), not in the thread of its
own faust gives it. Also: faust's aiokafka driver hard-codes `fetch_max_wait_ms=1500`, so a fetch
that includes a quiet partition may hold back a busy one for 1.5 s (`FETCH_MAX_WAIT_MS` bounds
it); faust pauses partitions only in its own bookkeeping, so the aiokafka consumer is made to pause
them too; and faust's Monitor sensor (per-message statistics for its own web UI) is left out, the
service exports Prometheus metrics. faust-streaming (0.15.3) and mode-streaming (0.7.1) are
pinned; tests/unit/test_features_runtime.py fails if a method replaced or relied on here changes
upstream.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import faust
from aiokafka import AIOKafkaProducer
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, Message
from mode.utils.futures import maybe_async

from shared.kafka import OutRecord, send_batched

FETCH_MAX_WAIT_MS = 20
# Changelog records of stored batches go out together: one produce request per flush instead of one
# per batch (at 1,000 events/s a fetch brings ~10 records, and each request costs the worker and the
# broker alike). A batch is acked once its flush is acknowledged.
CHANGELOG_LINGER_S = 0.05
CHANGELOG_FLUSH_RECORDS = 1000
# Records delivered but not yet acked. Bounds the memory their batches' unstored table writes take
# and how far acks trail processing (without a bound, a backlog's join writes piled up: 2.8 GB at 1M
# events). Counted in records, not batches: at a low rate many small batches may be in flight.
MAX_IN_FLIGHT_RECORDS = 4000

Batch = dict[TP, list[Message]]


class OutputStalled(RuntimeError):
    """The broker did not acknowledge output within the output timeout; the worker stops."""

# processes a batch and returns what resolves once all of its output is acknowledged by the broker
BatchHandler = Callable[[Batch], Awaitable["asyncio.Future[Any]"]]


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """faust's aiokafka consumer "thread", run as tasks on the worker's own event loop.

    faust runs the aiokafka consumer in a thread of its own with its own event loop: every fetch
    is a call into that thread and a result back (two cross-thread wake-ups), and the two threads
    take turns on the GIL. At 1,000 events/s (10 per fetch) that doubled the time from an event's
    ack to its snapshot (measured with the bench's probe: p50 19-26 ms vs 7-9 ms in-loop).
    mode's ServiceThread already keeps to one loop's semantics: the service's tasks, its
    stop/shutdown events and faust's rebalance callbacks (via the consumer's method queue) run
    unchanged when the "thread" loop is the worker's loop."""

    async def start(self) -> None:  # mode's ServiceThread.start without the OS thread
        assert not self._thread_started.is_set()
        self._thread_started.set()
        self._thread_running = asyncio.get_running_loop().create_future()
        self._serving = asyncio.ensure_future(self._serve())  # start, wait for stop, shut down
        try:
            await self._thread_running  # set (or failed) by _serve once the service has started
        finally:
            self._thread_running = None

    async def call_thread(self, fun: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await maybe_async(fun(*args, **kwargs))

    async def _gather_remaining_tasks(self) -> None:
        """mode cancels every task left on the thread's loop at shutdown; here that loop is the
        worker's: the aiokafka consumer's own tasks end with its stop()."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read by the fetcher created in start()
        return consumer

    def mirror_paused(self, paused: set[TP]) -> None:
        """Pause exactly `paused` (those assigned) in the aiokafka consumer."""
        consumer = self._consumer
        if consumer is None:
            return
        want = {tp for tp in consumer.assignment() if tp in paused}
        now = consumer.paused()
        if want - now:
            consumer.pause(*(want - now))
        if now - want:
            consumer.resume(*(now - want))


class Consumer(faust_aiokafka.Consumer):
    def __post_init__(self) -> None:
        super().__post_init__()
        self.batch_lock = asyncio.Lock()
        # delivered batches not yet acked, oldest first: (output done, batch, consumer generation, since)
        self.in_flight: deque[tuple[asyncio.Future[Any], Batch, int, float]] = deque()
        self.in_flight_records = 0

    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, thread_loop=self.loop, beacon=self.beacon)

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        async with self.batch_lock:  # no new batch; the batches in flight finish and ack first
            if self.in_flight:
                await asyncio.gather(*(entry[0] for entry in self.in_flight), return_exceptions=True)
            await super().on_partitions_revoked(revoked)

    # faust pauses partitions in its own bookkeeping only (it filters what it takes from the fetcher),
    # so aiokafka kept fetching e.g. the active tables' changelogs, which this worker writes all the
    # time. Records left in aiokafka's fetch buffer hold back the next fetch from that broker for
    # its prefetch backoff (100 ms): measured p50 63 ms from an event's ack to its snapshot at
    # 1,000 events/s. The aiokafka consumer now pauses what faust pauses.
    def pause_partitions(self, tps: Any) -> None:
        super().pause_partitions(tps)
        self._thread.mirror_paused(self._paused_partitions)

    def resume_partitions(self, tps: Any) -> None:
        super().resume_partitions(tps)
        self._thread.mirror_paused(self._paused_partitions)

    async def on_partitions_assigned(self, assigned: set[TP], generation_id: int = 0) -> None:
        await super().on_partitions_assigned(assigned, generation_id)
        self._thread.mirror_paused(self._paused_partitions)

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - run by every worker test
        """faust's fetch loop (0.15.3 `Consumer._drain_messages` and `getmany`), delivering the
        records of batch-agent topics per fetch instead of one by one."""
        handlers: dict[str, BatchHandler] = self.app.batch_handlers
        per_message = self.callback
        stopped, fetcher_stopped = self._stopped.is_set, fetcher._stopped.is_set
        try:
            while not (stopped() or fetcher_stopped()):
                self.diag.set_flag(CONSUMER_FETCHING)
                records, active = await self._wait_next_records(timeout=1.0)
                await self.sleep(0)  # the fetch may return at once, again and again
                if not records or self.should_stop:
                    continue
                if not self.flow_active:
                    # fetched while a rebalance stopped the flow: re-read from the committed offsets
                    await self.perform_seek()
                    continue
                generation = self.app.consumer_generation_id
                batches: dict[BatchHandler, Batch] = {}
                for tp, recs in records.items():
                    if active is not None and tp not in active and tp not in self._buffered_partitions:
                        continue
                    messages = await self._unread(tp, recs)
                    handler = handlers.get(tp.topic)
                    if handler is not None:
                        if messages:
                            batches.setdefault(handler, {})[tp] = messages
                        continue
                    for message in messages:  # faust's own path (changelogs, standbys)
                        if not self.flow_active or self.app.consumer_generation_id != generation:
                            break
                        await self.wait_first(per_message(message), self.suspend_flow.wait())
                        self._read_offset[tp] = message.offset
                for handler, batch in batches.items():
                    await self._deliver(handler, batch, generation)
                if self._commit_every is not None and self._n_acked >= self._commit_every:
                    self._n_acked = 0
                    await self.commit()
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            self.diag.unset_flag(CONSUMER_FETCHING)

    async def _unread(self, tp: TP, records: list[Any]) -> list[Message]:
        """The fetched records past the last one delivered, as faust Messages; offset gaps
        (compaction, transaction markers) are recorded so that commits can pass them."""
        last = self._read_offset[tp]
        acks = self.app.topics.acks_enabled_for(tp.topic)
        messages = []
        for record in records:
            offset = record.offset
            if last is not None and offset < last:
                continue
            if last and offset - last > 1 and acks:
                await self._add_gap(tp, last + 1, offset)
            messages.append(self._to_message(tp, record))
            last = offset
        return messages

    async def _deliver(self, handler: BatchHandler, batch: Batch, generation: int) -> None:
        """Run the handler; ack the batch when its output is acknowledged. Meanwhile the next batch
        is processed: output of successive batches is in flight together (aiokafka keeps it in
        order per partition and bounds it: one pending record batch per partition)."""
        async with self.batch_lock:
            while self.in_flight_records >= MAX_IN_FLIGHT_RECORDS:
                await asyncio.wait([self.in_flight[0][0]])
            if not self.flow_active or self.app.consumer_generation_id != generation:
                return  # a rebalance came first: faust re-reads these from the committed offsets
            done = asyncio.ensure_future(await handler(batch))
            for tp, messages in batch.items():
                self._read_offset[tp] = messages[-1].offset
            self.in_flight.append((done, batch, generation, time.monotonic()))
            self.in_flight_records += sum(map(len, batch.values()))
            done.add_done_callback(self._ack_done_batches)

    def oldest_in_flight_s(self) -> float:
        """How long the oldest batch in flight has waited for its output (0 when none)."""
        return time.monotonic() - self.in_flight[0][3] if self.in_flight else 0.0

    def _ack_done_batches(self, _: asyncio.Future[Any]) -> None:
        """Ack finished batches in delivery order: a batch is acked only after every earlier one
        (faust's commit logic tolerates an ack gap right after the committed offset)."""
        in_flight, ack = self.in_flight, self.ack
        while in_flight and in_flight[0][0].done():
            done, batch, generation, _ = in_flight.popleft()
            self.in_flight_records -= sum(map(len, batch.values()))
            error = done.exception() if not done.cancelled() else asyncio.CancelledError()
            if error is not None:  # never acked: the worker stops, its events are redelivered
                self.log.error("batch output failed: %r", error)
                in_flight.clear()
                self.in_flight_records = 0
                asyncio.ensure_future(self.crash(error))
                return
            if self.app.consumer_generation_id != generation:
                continue  # revoked meanwhile (revocation waits for in-flight batches: rare)
            for messages in batch.values():
                for message in messages:
                    ack(message)


class Producer(faust_aiokafka.Producer):
    async def flush(self) -> None:
        """faust flushes the producer before every offset commit, with no time limit: a producer
        that never gets its acknowledgements hung the commit task (and with it the worker's
        shutdown). A flush that takes longer than the app's output timeout crashes the worker
        instead; it restarts from the last commit."""
        try:
            await asyncio.wait_for(super().flush(), self.app.output_timeout_s)
        except asyncio.TimeoutError:
            raise OutputStalled(f"producer flush took over {self.app.output_timeout_s:g}s") from None


class Transport(faust_aiokafka.Transport):
    Consumer = Consumer
    Producer = Producer


Change = tuple[int, bytes | None]  # (write number, value; None deletes)


class BatchTable:
    """Partition-explicit access to a bytes -> bytes faust table (RocksDB store) for batch agents.

    A batch's writes stay in memory (`get` sees them) until the batch's output (snapshots, dead
    letters) is acknowledged by the broker; only then are they written to the partition's RocksDB
    database and sent to the changelog (`App.send_all`). So neither the local store nor the
    changelog is ever ahead of the output: after a crash a redelivered event is either new (its
    snapshot is computed again) or a duplicate whose snapshot is already on the topic. (Writing the
    store first lost snapshots in the kill -9 test: a redelivered event found in the state is a
    duplicate, and a duplicate older than the allowed lateness cannot always be replayed.)
    The changelog topic, its format, recovery and standbys are faust's."""

    def __init__(self, table: faust.Table):
        if table.key_type is not bytes or table.value_type is not bytes:
            raise TypeError("BatchTable holds bytes keys and values only")
        self.table = table
        self._writes = 0
        self._unstored: dict[tuple[int, bytes], Change] = {}  # written by batches not yet stored
        self._batch: dict[tuple[int, bytes], Change] = {}  # written by the batch being processed

    @property
    def changelog(self) -> str:
        return self.table.changelog_topic.get_topic_name()

    def _db(self, partition: int) -> Any:
        return self.table.data._db_for_partition(partition)

    def get(self, partition: int, key: bytes) -> bytes | None:
        change = self._unstored.get((partition, key))
        return change[1] if change is not None else self._db(partition).get(key)

    def _write(self, partition: int, key: bytes, value: bytes | None) -> None:
        self._writes += 1
        # A key written again moves to the end: changelog records go out in the order of each key's
        # last write, so a changelog cut short by a crash (a prefix of a partition's records) holds
        # what the handler wrote before, as it wrote it (e.g. an entity's records before its head).
        self._batch.pop((partition, key), None)
        self._unstored[(partition, key)] = self._batch[(partition, key)] = (self._writes, value)

    def set(self, partition: int, key: bytes, value: bytes) -> None:
        self._write(partition, key, value)

    def delete(self, partition: int, key: bytes) -> None:
        self._write(partition, key, None)

    def items_from(self, partition: int, start: bytes) -> Iterator[tuple[bytes, bytes]]:
        """The partition's stored entries in key order, from `start` on (not the unstored writes)."""
        return iter(self._db(partition).items(from_key=start))

    def take_batch(self) -> dict[tuple[int, bytes], Change]:
        batch, self._batch = self._batch, {}
        return batch

    def changelog_records(self, batch: dict[tuple[int, bytes], Change]) -> list[OutRecord]:
        topic = self.changelog
        return [OutRecord(topic, key, change[1], None, partition) for (partition, key), change in batch.items()]

    def store(self, batch: dict[tuple[int, bytes], Change]) -> None:
        """Write a batch's changes to RocksDB (after their changelog records are acknowledged)."""
        unstored = self._unstored
        for (partition, key), change in batch.items():
            db, value = self._db(partition), change[1]
            if value is None:
                del db[key]
            else:
                db[key] = value
            if unstored.get((partition, key)) is change:  # not written again by a later batch
                del unstored[(partition, key)]

    def persisted(self, tp: TP, offset: int) -> None:
        self.table.data.set_persisted_offset(tp, offset)

    def view(self, partition: int) -> PartitionView:
        return PartitionView(self, partition)


class PartitionView:
    """One partition of a BatchTable as a plain key-value store (what domain code works on)."""

    __slots__ = ("_table", "_p")

    def __init__(self, table: BatchTable, partition: int):
        self._table, self._p = table, partition

    def get(self, key: bytes) -> bytes | None:
        return self._table.get(self._p, key)

    def set(self, key: bytes, value: bytes) -> None:
        self._table.set(self._p, key, value)

    def delete(self, key: bytes) -> None:
        self._table.delete(self._p, key)

    def items_from(self, start: bytes) -> Iterator[tuple[bytes, bytes]]:
        return self._table.items_from(self._p, start)


class App(faust.App):
    batch_handlers: dict[str, BatchHandler]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batch_handlers = {}
        self.batch_tables: list[BatchTable] = []
        self.output_timeout_s = 60.0  # see Producer.flush and send_all
        self._last_queued: asyncio.Future[Any] | None = None
        self._last_stored: asyncio.Future[Any] | None = None
        self._last_flush: asyncio.Future[Any] | None = None
        # the changelog flush being filled: (acknowledged, records, timer)
        self._flush: tuple[asyncio.Future[Any], list[OutRecord], asyncio.TimerHandle] | None = None

    def _new_transport(self) -> Transport:
        return Transport(self.conf.broker_consumer, self)

    def on_init_dependencies(self) -> Any:
        dependencies = super().on_init_dependencies()  # adds the Monitor to the sensors
        self.sensors.remove(self.monitor)
        return dependencies

    def batch_agent(self, *topics: faust.TopicT) -> Callable[[BatchHandler], BatchHandler]:
        """Register `handler(batch)` for the topics' records: called once per fetch with the new
        records of each assigned partition, in offset order. It returns a future (`send_all`'s);
        the records are acked when that resolves, after those of every earlier batch."""
        def register(handler: BatchHandler) -> BatchHandler:
            for topic in topics:
                self.topics.add(topic)  # subscribe
                for name in topic.topics:
                    self.batch_handlers[name] = handler
            return handler
        return register

    def batch_table(self, table: faust.Table) -> BatchTable:
        batch_table = BatchTable(table)
        self.batch_tables.append(batch_table)
        return batch_table

    @property
    def kafka_producer(self) -> AIOKafkaProducer:
        return self.producer._ensure_producer()

    async def send_all(self, records: list[OutRecord],
                       on_output: Callable[[asyncio.Future[Any]], None] | None = None) -> asyncio.Future[Any]:
        """Produce a batch's `records`; once the broker has acknowledged them, store the batch's
        table writes (in batch order) and queue their changelog records. Returns what resolves when
        all of it is acknowledged: a batch handler's return value."""
        changes = [(table, table.take_batch()) for table in self.batch_tables]
        try:  # send_batch waits for room in the producer: as long as the broker does not answer
            sent = await asyncio.wait_for(send_batched(self.kafka_producer, records), self.output_timeout_s)
        except asyncio.TimeoutError:
            raise OutputStalled(f"output not accepted by the producer within {self.output_timeout_s:g}s") from None
        output = asyncio.gather(*sent)
        if on_output is not None:
            output.add_done_callback(on_output)
        loop = asyncio.get_running_loop()
        previous_queued, self._last_queued = self._last_queued, loop.create_future()
        previous_stored, self._last_stored = self._last_stored, loop.create_future()
        queued, stored, done = self._last_queued, self._last_stored, loop.create_future()

        async def store_then_changelog() -> None:
            try:
                try:  # acknowledged in time, or the worker stops (and restarts from its last commit)
                    await asyncio.wait_for(asyncio.shield(output), self.output_timeout_s)
                except asyncio.TimeoutError:
                    raise OutputStalled(f"output not acknowledged within {self.output_timeout_s:g}s") from None
                if previous_queued is not None:
                    await previous_queued  # changelog records go out in batch order
                flushed = self._changelog([rec for table, batch in changes for rec in table.changelog_records(batch)])
                queued.set_result(None)
                metas = await flushed
                if previous_stored is not None:
                    await previous_stored  # stores go in batch order
                for table, batch in changes:
                    table.store(batch)
                # Only now may a recovery start after this flush: from its first record (re-reading
                # what is stored already), never past a record this worker has not stored.
                tables = {table.changelog: table for table in self.batch_tables}
                for meta in metas:
                    tables[meta.topic].persisted(TP(meta.topic, meta.partition), meta.offset)
                stored.set_result(None)
            except asyncio.CancelledError:
                for fut in (queued, stored, done):
                    fut.cancel()
            except Exception as exc:  # noqa: BLE001 - handed to the consumer, which crashes the worker
                for fut in (queued, stored, done):
                    if not fut.done():
                        fut.set_exception(exc)
            else:
                done.set_result(None)

        asyncio.ensure_future(store_then_changelog())
        return done

    def _changelog(self, records: list[OutRecord]) -> asyncio.Future[Any]:
        """Queue changelog records for the next flush; returns what resolves when it is acknowledged.
        A flush goes out CHANGELOG_LINGER_S after its first records, or at CHANGELOG_FLUSH_RECORDS."""
        if self._flush is None:
            loop = asyncio.get_running_loop()
            timer = loop.call_later(CHANGELOG_LINGER_S, self._send_changelog)
            self._flush = (loop.create_future(), [], timer)
        flushed, pending, _ = self._flush
        pending += records
        if len(pending) >= CHANGELOG_FLUSH_RECORDS:
            self._send_changelog()
        return flushed

    def _send_changelog(self) -> None:
        assert self._flush is not None
        (flushed, records, timer), self._flush = self._flush, None
        timer.cancel()
        previous, self._last_flush = self._last_flush, asyncio.get_running_loop().create_future()
        asyncio.ensure_future(self._produce_changelog(records, previous, self._last_flush, flushed))

    async def _produce_changelog(self, records: list[OutRecord], previous: asyncio.Future[Any] | None,
                                 queued: asyncio.Future[Any], flushed: asyncio.Future[Any]) -> None:
        try:
            if previous is not None:
                await previous  # flushes queue their record batches in order
            sent = await send_batched(self.kafka_producer, records)
            queued.set_result(None)  # aiokafka keeps the order within each partition from here
            try:
                metas = await asyncio.wait_for(asyncio.gather(*sent), self.output_timeout_s)
            except asyncio.TimeoutError:
                raise OutputStalled(f"changelog not acknowledged within {self.output_timeout_s:g}s") from None
        except asyncio.CancelledError:
            for fut in (queued, flushed):
                fut.cancel()
        except Exception as exc:  # noqa: BLE001 - the batches waiting on it crash the worker
            for fut in (queued, flushed):
                if not fut.done():
                    fut.set_exception(exc)
        else:
            flushed.set_result(metas)
