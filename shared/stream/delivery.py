"""How the stream runtime takes records from faust: batch delivery, on the worker's own loop.

Measured on this project's 2-core machine (README, Features): a faust agent costs ~220 µs CPU per
record before doing any work (the consumer races each delivery against a rebalance with
`wait_first`: four tasks and an `asyncio.wait`; then a channel queue, an Event, stream acks), and
a table write ~350-480 µs (`send_soon`, a FutureMessage, a producer-buffer hop, a per-record
callback writing the persisted offset). So the consumer here hands each fetch's records of a
stream's topics to the runtime as one batch (`{TopicPartition: [ConsumerRecord, ...]}`: aiokafka's
records as fetched, see `shared.stream.app`), and acks their offsets (they become committable) per
batch, in delivery order, once the runtime says the batch's work is done. What stays faust's: the consumer group, rebalances,
offset tracking and commits, table stores, changelog topics, recovery, standby replicas, timers.
Topics without a stream (changelogs, standbys) take faust's own per-message path unchanged.

Rebalances: batches are delivered under `Consumer.batch_lock`, which `on_partitions_revoked` takes
first and then waits for the batches in flight, so a revocation never sees acks landing after
faust has reset its offset bookkeeping (a stale ack ahead of the committed offset would be
committed as the next position and skip records). A batch fetched under an older consumer
generation is dropped without acks; faust seeks to the committed offsets after the rebalance, so
those records come again.

The aiokafka consumer runs on the worker's event loop (`ConsumerThread`), not in the thread of its
own faust gives it. Also: faust's aiokafka driver hard-codes `fetch_max_wait_ms=1500`, so a fetch
that includes a quiet partition may hold back a busy one for 1.5 s (`fetch_wait_ms` bounds it);
faust pauses partitions only in its own bookkeeping, so the aiokafka consumer is made to pause
them too; faust flushes its producer before each commit without a time limit (`Producer.flush`
adds one). faust-streaming (0.15.3), mode-streaming (0.7.1) and aiokafka (0.14.0) are pinned;
tests/unit/test_stream_runtime.py fails if a method replaced or relied on here changes upstream.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka
from aiokafka.structs import ConsumerRecord
from faust.types import TP
from faust.types.tuples import ack_lock
from mode.utils.futures import maybe_async, notify

Batch = dict[TP, list[ConsumerRecord]]  # the fetched records themselves: no faust Message per record
Offsets = dict[TP, list[int]]  # a delivered batch's offsets, kept until it is acked (not its messages)


class OutputStalled(RuntimeError):
    """The broker did not acknowledge output within the output timeout; the worker stops."""


# processes a batch and returns what resolves once all of its work is done (then it is acked)
Deliver = Callable[[Batch], Awaitable["asyncio.Future[Any]"]]


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
        consumer._fetch_max_wait_ms = self.app.settings.fetch_wait_ms  # read by the fetcher created in start()
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
        # delivered batches not yet acked, oldest first: (output done, offsets, consumer generation, since)
        self.in_flight: deque[tuple[asyncio.Future[Any], Offsets, int, float]] = deque()
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
        handlers: dict[str, Deliver] = self.app.batch_handlers
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
                batches: dict[Deliver, Batch] = {}
                for tp, recs in records.items():
                    if active is not None and tp not in active and tp not in self._buffered_partitions:
                        continue
                    unread = await self._unread(tp, recs)
                    handler = handlers.get(tp.topic)
                    if handler is not None:
                        if unread:
                            batches.setdefault(handler, {})[tp] = unread
                        continue
                    for record in unread:  # faust's own path (changelogs, standbys)
                        if not self.flow_active or self.app.consumer_generation_id != generation:
                            break
                        message = self._to_message(tp, record)
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

    async def _unread(self, tp: TP, records: list[ConsumerRecord]) -> list[ConsumerRecord]:
        """The fetched records past the last one delivered; offset gaps (compaction, transaction
        markers) are recorded so that commits can pass them."""
        last = self._read_offset[tp]
        acks = self.app.topics.acks_enabled_for(tp.topic)
        unread = []
        for record in records:
            offset = record.offset
            if last is not None and offset < last:
                continue
            if last and offset - last > 1 and acks:
                await self._add_gap(tp, last + 1, offset)
            unread.append(record)
            last = offset
        return unread

    async def _deliver(self, handler: Deliver, batch: Batch, generation: int) -> None:
        """Run the handler; ack the batch when its output is acknowledged. Meanwhile the next batch
        is processed: output of successive batches is in flight together (aiokafka keeps it in
        order per partition and bounds it: one pending record batch per partition)."""
        async with self.batch_lock:
            while self.in_flight_records >= self.app.settings.max_in_flight_records:
                await asyncio.wait([self.in_flight[0][0]])
            if not self.flow_active or self.app.consumer_generation_id != generation:
                return  # a rebalance came first: faust re-reads these from the committed offsets
            done = asyncio.ensure_future(await handler(batch))
            offsets: Offsets = {}
            for tp, messages in batch.items():
                offsets[tp] = [message.offset for message in messages]
                self._read_offset[tp] = messages[-1].offset
            # the messages themselves are not kept: a checkpoint's hold keeps thousands of batches in flight
            self.in_flight.append((done, offsets, generation, time.monotonic()))
            self.in_flight_records += sum(map(len, offsets.values()))
            done.add_done_callback(self._ack_done_batches)

    def oldest_in_flight_s(self) -> float:
        """How long the oldest batch in flight has waited for its output (0 when none)."""
        return time.monotonic() - self.in_flight[0][3] if self.in_flight else 0.0

    def _ack_done_batches(self, _: asyncio.Future[Any]) -> None:
        """Ack finished batches in delivery order: a batch is acked only after every earlier one
        (faust's commit logic tolerates an ack gap right after the committed offset)."""
        in_flight = self.in_flight
        while in_flight and in_flight[0][0].done():
            done, offsets, generation, _ = in_flight.popleft()
            self.in_flight_records -= sum(map(len, offsets.values()))
            if done.cancelled() and (self.should_stop or self.app.should_stop):
                in_flight.clear()  # stopping: what is in flight is not acked, and is read again after a restart
                self.in_flight_records = 0
                return
            error = done.exception() if not done.cancelled() else asyncio.CancelledError()
            if error is not None:  # never acked: the worker stops, its events are redelivered
                self.log.error("batch output failed: %r", error)
                in_flight.clear()
                self.in_flight_records = 0
                asyncio.ensure_future(self.crash(error))
                return
            if self.app.consumer_generation_id != generation:
                continue  # revoked meanwhile (revocation waits for in-flight batches: rare)
            for tp, tp_offsets in offsets.items():
                self._ack_offsets(tp, tp_offsets)

    def _ack_offsets(self, tp: TP, offsets: list[int]) -> None:
        """faust's `Consumer.ack` for one partition's offsets of a batch at once: they become
        committable (the same bookkeeping, per batch instead of per message; batch-delivered messages
        are never in faust's unacked set, and nothing reads their `acked` flag)."""
        if not self.app.topics.acks_enabled_for(tp.topic):
            return
        with ack_lock:
            committed = self._committed_offset[tp]
            acked_index = self._acked_index[tp]
            new = [offset for offset in offsets
                   if (committed is None or offset >= committed) and offset not in acked_index]
            if new:
                acked_index.update(new)
                self._acked[tp].extend(new)
                self._n_acked += len(new)
            notify(self._waiting_for_ack)


class Producer(faust_aiokafka.Producer):
    async def flush(self) -> None:
        """faust flushes the producer before every offset commit, with no time limit: a producer
        that never gets its acknowledgements hung the commit task (and with it the worker's
        shutdown). A flush that takes longer than the app's output timeout crashes the worker
        instead; it restarts from the last commit."""
        try:
            await asyncio.wait_for(super().flush(), self.app.settings.output_timeout_s)
        except asyncio.TimeoutError:
            raise OutputStalled(f"producer flush took over {self.app.settings.output_timeout_s:g}s") from None


class Transport(faust_aiokafka.Transport):
    Consumer = Consumer
    Producer = Producer


