"""faust-streaming with two measured hot-path fixes; `App` is a drop-in `faust.App`.

1. faust's consumer loop hands each fetched record to the streams through
   `Service.wait_first(callback(message), suspend_flow.wait())`: four tasks and an `asyncio.wait`
   per record, so that a delivery blocked on a full stream buffer can be abandoned when a
   rebalance suspends the flow. A delivery can only block when a buffer is full, the flow is
   suspended or the conductor is re-subscribing; `Consumer._drain_messages` below checks those
   first and otherwise awaits the delivery directly (it completes without yielding), keeping
   faust's race for the rare blocking case. A no-op agent measured 220 -> 127 µs CPU per record.
2. faust's aiokafka driver hard-codes `fetch_max_wait_ms=1500`: a fetch that includes a quiet
   partition (a changelog, the labels topic) may hold back records of a busy one for 1.5 s.
   `FETCH_MAX_WAIT_MS` bounds that wait.
3. Agents process events in batches (`batches()` below: whatever is buffered, without waiting,
   so a quiet stream adds no latency and a backlog gives large batches and few produce
   requests), so table writes must name the event they belong to: `use_event(event)` makes it
   faust's current event, which decides the RocksDB partition database and the changelog
   partition of the writes that follow.
4. A faust table sends each change to its changelog through `Topic.send_soon`: a FutureMessage,
   a hop through the producer buffer's task, and per record an ack callback that writes the
   persisted offset into RocksDB. Measured in a bare agent: ~350 µs per table write, five times
   the cost of the snapshot sends. `Table` below queues changes instead (the last value per key)
   and `flush_changelog()`, awaited by the agent at the end of each batch before faust acks the
   batch's events, sends them as one record batch per partition through the transport
   producer and records the persisted offset once per batch. Store writes, recovery, standbys and changelog format are faust's.
5. faust's Monitor sensor keeps per-message statistics for its own web UI; the service exports
   Prometheus metrics instead, so `App` leaves the Monitor out of the sensors (~15 µs per record).
The loop body is faust-streaming 0.15.3's `Consumer._drain_messages` otherwise unchanged; the
version is pinned, and tests/unit/test_features_runtime.py fails if the patched methods change.
"""
from __future__ import annotations

import asyncio
import weakref
from typing import Any, AsyncIterator, cast

import faust
from faust.streams import _current_event, current_event
from faust.types import TP

from shared.kafka import OutRecord, send_batched
from faust.transport.drivers import aiokafka as faust_aiokafka

FETCH_MAX_WAIT_MS = 20


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read by the fetcher created in start()
        return consumer


class Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def _delivery_may_block(self) -> bool:
        return (self.suspend_flow.is_set() or not self.app.flow_control.is_active()
                or self.app.topics._tp_to_callback_lock.locked()
                or any(q.full() for q in self.app.flow_control._queues))

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - exercised by every worker test
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        acks_enabled_for = self.app.topics.acks_enabled_for
        may_block = self._delivery_may_block
        yield_every, since_yield = 100, 0
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                self.diag.set_flag("fetching")
                ait = cast(AsyncIterator, getmany(timeout=1.0))
                await self.sleep(0)  # getmany may return at once, again and again
                if self.should_stop:
                    continue
                async for tp, message in ait:
                    since_yield += 1
                    if since_yield > yield_every:
                        await asyncio.sleep(0)
                        since_yield = 0
                    offset = message.offset
                    r_offset = get_read_offset(tp)
                    if r_offset is not None and offset < r_offset:
                        continue  # already delivered (faust logs these at dev level only)
                    if offset - (r_offset or 0) > 1 and r_offset and acks_enabled_for(message.topic):
                        await self._add_gap(tp, r_offset + 1, offset)
                    if self._commit_every is not None and self._n_acked >= self._commit_every:
                        self._n_acked = 0
                        await self.commit()
                    if may_block():
                        await self.wait_first(callback(message), self.suspend_flow.wait())
                    else:
                        await callback(message)
                    set_read_offset(tp, offset)
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
            self.diag.unset_flag("fetching")

class Transport(faust_aiokafka.Transport):
    Consumer = Consumer


class App(faust.App):
    def _new_transport(self) -> Transport:
        return Transport(self.conf.broker_consumer, self)

    def on_init_dependencies(self) -> Any:
        dependencies = super().on_init_dependencies()  # adds the Monitor to the sensors
        self.sensors.remove(self.monitor)
        return dependencies


async def batches(stream: faust.StreamT, max_events: int) -> AsyncIterator[list[faust.EventT]]:
    """The stream's events in batches: a batch ends at `max_events` or as soon as no further event
    is buffered, so no event waits in a half-filled batch. Events are acked (their offsets become
    committable) only once the caller is done with their batch, i.e. when it asks for the next
    one (as faust's own `take_events` does). Needs the app's `stream_wait_empty=True` (faust's
    default): a rebalance then waits for the batch in hand to be acked before it seeks back to
    the committed offsets. Without that wait, acks of a batch finished after the seek land ahead
    of the redelivered offsets and faust commits past events not yet processed (found by the
    kill -9 test)."""
    queue = stream.channel.queue
    stream.enable_acks = False
    events: list[faust.EventT] = []
    async for event in stream.events():
        events.append(event)
        if len(events) >= max_events or queue.empty():
            yield events
            for done in events:
                await stream.ack(done)
            events = []


def use_event(event: faust.EventT) -> None:
    """Make `event` faust's current event (what `Stream` does for the event it yields)."""
    _current_event.set(weakref.ref(event))


class Table(faust.Table):
    """A bytes -> bytes faust table whose changelog records are sent in batches (see 4. above)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.key_type is not bytes or self.value_type is not bytes:
            raise TypeError("runtime.Table holds bytes keys and values only")
        self._pending: dict[tuple[int, bytes], bytes | None] = {}

    def read(self, key: bytes) -> bytes | None:
        """The stored value (no sensors, no default); the current event picks the partition."""
        return self.data.get(key)

    def put(self, key: bytes, value: bytes) -> None:
        """Store `key` in the current event's partition and queue its changelog record."""
        self.data[key] = value
        self.on_key_set(key, value)

    def delete(self, key: bytes, partition: int) -> None:
        """Delete `key` of `partition`; needs no current event (expiry sweeps run between events)."""
        del self.data[key]
        self._pending[(partition, key)] = None

    def _event_partition(self) -> int:
        event = current_event()
        if event is None:
            raise RuntimeError(f"table {self.name} changed outside of an agent's event")
        return event.message.partition

    def on_key_set(self, key: bytes, value: bytes) -> None:
        self._pending[(self._event_partition(), key)] = value

    def on_key_del(self, key: bytes) -> None:
        self._pending[(self._event_partition(), key)] = None

    async def flush_changelog(self) -> None:
        """Send the queued changes (faust flushes the producer before it commits offsets)."""
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        topic = self.changelog_topic.get_topic_name()
        records = [OutRecord(topic, key, value, None, part) for (part, key), value in pending.items()]
        for fut in await send_batched(self.app.producer._ensure_producer(), records):
            fut.add_done_callback(self._persisted)

    def _persisted(self, fut: asyncio.Future) -> None:
        # The batch's first offset: recovery may re-read a few records it already has (harmless).
        if not fut.cancelled() and fut.exception() is None:
            meta = fut.result()
            self.data.set_persisted_offset(TP(meta.topic, meta.partition), meta.offset)
