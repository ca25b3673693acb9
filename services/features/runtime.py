"""faust-streaming with batch delivery; `App` is a `faust.App` plus `batch_agent` and `BatchTable`.

Measured on this project's 2-core machine (README, Features): a faust agent costs ~220 µs CPU per
record before doing any work (the consumer races each delivery against a rebalance with
`wait_first`: four tasks and an `asyncio.wait`; then a channel queue, an Event, stream acks), and
a table write ~350-480 µs (`send_soon`, a FutureMessage, a producer-buffer hop, a per-record
callback writing the persisted offset). The feature worker's hot topics therefore go through
`App.batch_agent`: the consumer hands each fetch's records to the handler as one batch
(`{TopicPartition: [Message, ...]}`), the handler reads and writes `BatchTable`s by explicit
partition and produces everything in record batches (`send_all`), and the records are acked only
after every output, table changelogs included, is acknowledged by the broker. What stays faust's:
the consumer group, rebalances, offset tracking and commits, table stores, changelog topics,
recovery, standby replicas, the web server, timers. Topics without a batch agent (changelogs,
standbys) take faust's own per-message path unchanged.

Rebalances: a batch runs under `Consumer.batch_lock`, which `on_partitions_revoked` takes first, so
a revocation waits for the batch in flight (it is short: one fetch), and never sees acks landing
after faust has reset its offset bookkeeping (a stale ack ahead of the committed offset would be
committed as the next position and skip records). A batch fetched under an older consumer
generation is dropped without acks; faust seeks to the committed offsets after the rebalance, so
those records come again.

Also: faust's aiokafka driver hard-codes `fetch_max_wait_ms=1500`, so a fetch that includes a quiet
partition may hold back a busy one for 1.5 s (`FETCH_MAX_WAIT_MS` bounds it); and faust's Monitor
sensor (per-message statistics for its own web UI) is left out, the service exports Prometheus
metrics. faust-streaming is pinned (0.15.3); tests/unit/test_features_runtime.py fails if a method
replaced here changes upstream.
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import faust
from aiokafka import AIOKafkaProducer
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, Message

from shared.kafka import OutRecord, send_batched

FETCH_MAX_WAIT_MS = 20

Batch = dict[TP, list[Message]]
# processes a batch and returns what resolves once all of its output is acknowledged by the broker
BatchHandler = Callable[[Batch], Awaitable["asyncio.Future[Any]"]]


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read by the fetcher created in start()
        return consumer

    def mirror_paused(self, paused: set[TP]) -> None:
        """Pause exactly `paused` (those assigned) in the aiokafka consumer, on the thread's loop."""
        self.thread_loop.call_soon_threadsafe(self._mirror_paused, frozenset(paused))

    def _mirror_paused(self, paused: frozenset[TP]) -> None:
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
    _batch_lock: asyncio.Lock | None = None
    _in_flight: set[asyncio.Future[Any]] | None = None

    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    @property
    def batch_lock(self) -> asyncio.Lock:
        if self._batch_lock is None:
            self._batch_lock = asyncio.Lock()
        return self._batch_lock

    @property
    def in_flight(self) -> set[asyncio.Future[Any]]:
        if self._in_flight is None:
            self._in_flight = set()
        return self._in_flight

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        async with self.batch_lock:  # no new batch; the batches in flight finish and ack first
            if self.in_flight:
                await asyncio.gather(*self.in_flight, return_exceptions=True)
            await super().on_partitions_revoked(revoked)

    # faust pauses partitions in its own bookkeeping only (it filters what it takes from the fetcher),
    # so aiokafka kept fetching e.g. the active tables' changelogs, which this worker writes all the
    # time. Records left in aiokafka's fetch buffer hold back the next fetch from that broker for
    # its prefetch backoff (100 ms): measured p50 63 ms from an event's ack to its snapshot at
    # 1,000 events/s. The aiokafka consumer now pauses what faust pauses.
    def pause_partitions(self, tps: Any) -> None:
        super().pause_partitions(tps)
        self._thread.mirror_paused(set(self._paused_partitions))

    def resume_partitions(self, tps: Any) -> None:
        super().resume_partitions(tps)
        self._thread.mirror_paused(set(self._paused_partitions))

    async def on_partitions_assigned(self, assigned: set[TP], generation_id: int = 0) -> None:
        await super().on_partitions_assigned(assigned, generation_id)
        self._thread.mirror_paused(set(self._paused_partitions))

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
            if not self.flow_active or self.app.consumer_generation_id != generation:
                return  # a rebalance came first: faust re-reads these from the committed offsets
            done = asyncio.ensure_future(await handler(batch))
            for tp, messages in batch.items():
                self._read_offset[tp] = messages[-1].offset
            self.in_flight.add(done)
            done.add_done_callback(lambda fut: self._on_batch_done(fut, batch, generation))

    def _on_batch_done(self, done: asyncio.Future[Any], batch: Batch, generation: int) -> None:
        self.in_flight.discard(done)
        error = done.exception() if not done.cancelled() else asyncio.CancelledError()
        if error is not None:  # never acked: the worker stops, its events are redelivered
            self.log.error("batch output failed: %r", error)
            asyncio.ensure_future(self.crash(error))
            return
        if self.app.consumer_generation_id != generation:
            return  # revoked meanwhile (revocation waits for in-flight batches, so this is rare)
        ack = self.ack
        for messages in batch.values():
            for message in messages:
                ack(message)


class Transport(faust_aiokafka.Transport):
    Consumer = Consumer


class BatchTable:
    """Partition-explicit access to a bytes -> bytes faust table (RocksDB store) for batch agents.

    Reads and writes go to the partition's RocksDB database at once; changelog records are queued
    (the last value per key) and sent by `App.send_all` with the batch's other output, which then
    records the persisted changelog offset as faust's own table does. The changelog topic, its
    format, recovery and standbys are faust's."""

    def __init__(self, table: faust.Table):
        if table.key_type is not bytes or table.value_type is not bytes:
            raise TypeError("BatchTable holds bytes keys and values only")
        self.table = table
        self._pending: dict[tuple[int, bytes], bytes | None] = {}

    @property
    def changelog(self) -> str:
        return self.table.changelog_topic.get_topic_name()

    def _db(self, partition: int) -> Any:
        return self.table.data._db_for_partition(partition)

    def get(self, partition: int, key: bytes) -> bytes | None:
        return self._db(partition).get(key)

    def set(self, partition: int, key: bytes, value: bytes) -> None:
        self._db(partition)[key] = value
        self._pending[(partition, key)] = value

    def delete(self, partition: int, key: bytes) -> None:
        del self._db(partition)[key]
        self._pending[(partition, key)] = None

    def resend(self, partition: int, key: bytes) -> None:
        """Queue the stored value's changelog record again (after a redelivery: the store may hold a
        write whose changelog record was lost with a crash)."""
        value = self.get(partition, key)
        if value is not None:
            self._pending[(partition, key)] = value

    def items_from(self, partition: int, start: bytes) -> Iterator[tuple[bytes, bytes]]:
        """The partition's entries in key order, from `start` on."""
        return iter(self._db(partition).items(from_key=start))

    def take_changelog(self) -> list[OutRecord]:
        pending, self._pending = self._pending, {}
        topic = self.changelog
        return [OutRecord(topic, key, value, None, partition) for (partition, key), value in pending.items()]

    def persisted(self, tp: TP, offset: int) -> None:
        self.table.data.set_persisted_offset(tp, offset)


class App(faust.App):
    batch_handlers: dict[str, BatchHandler]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batch_handlers = {}
        self.batch_tables: list[BatchTable] = []

    def _new_transport(self) -> Transport:
        return Transport(self.conf.broker_consumer, self)

    def on_init_dependencies(self) -> Any:
        dependencies = super().on_init_dependencies()  # adds the Monitor to the sensors
        self.sensors.remove(self.monitor)
        return dependencies

    def batch_agent(self, *topics: faust.TopicT) -> Callable[[BatchHandler], BatchHandler]:
        """Register `handler(batch)` for the topics' records: called once per fetch with the new
        records of each assigned partition, in offset order; they are acked when it returns."""
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

    async def send_all(self, records: list[OutRecord]) -> asyncio.Future[Any]:
        """Produce `records` and every batch table's queued changelog records; returns what resolves
        once the broker has acknowledged all of them (a batch handler's return value)."""
        changelogs = {t.changelog: t for t in self.batch_tables}
        for table in self.batch_tables:
            records.extend(table.take_changelog())
        done = asyncio.gather(*await send_batched(self.kafka_producer, records))

        def persisted(fut: asyncio.Future[Any]) -> None:
            if fut.cancelled() or fut.exception() is not None:
                return
            for meta in fut.result():
                table = changelogs.get(meta.topic)
                if table is not None:
                    # the batch's first offset: a recovery may re-read a few records it already has
                    table.persisted(TP(meta.topic, meta.partition), meta.offset)
        done.add_done_callback(persisted)
        return done
