"""The stream runtime: a faust app whose streams are plain batch handlers.

A service declares tables and streams and hands over its HTTP app:

    app = StreamApp("features", version, settings, registry)
    state = app.table("entity-state", partitions=6)
    app.stream("features", [topics["events"]], handle_events, tables=[state])
    app.serve(fastapi_app)

`handle_events(batch, tables)` is a plain function: `batch` is `{TopicPartition: [aiokafka
ConsumerRecord]}` (the new records of one fetch, offset order per partition), `tables` maps the
stream's table names to their `BatchTable` (read and written by explicit partition,
`table.view(p)`); it returns the
records to send (`list[OutRecord]`, or an `Output` with a callback for when they are
acknowledged). The runtime then, in this order: produces the records (aiokafka's batch API);
once the broker has acknowledged them, sends the batch's table writes to the changelog (records
of successive batches go out together, `changelog_linger_s`/`changelog_flush_records`); once that
is acknowledged, stores them in RocksDB and records the changelog position a recovery may start
from; then acks the batch's records (their offsets become committable), in delivery order. The
next batch is processed meanwhile, up to `max_in_flight_records` records in flight. A handler sees
only its own tables; its writes are visible to its later reads at once.

The runtime also tracks the consumer group's lag (`/readyz`, Prometheus), serves the service's
FastAPI app on the worker's loop, and stops the worker when the broker leaves output unacknowledged
for `output_timeout_s` (it restarts from its last commit).
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import faust
import uvicorn
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from fastapi import FastAPI
from mode import Service
from prometheus_client import CollectorRegistry, Gauge

from shared.kafka import OutRecord, ensure_topics, make_consumer, send_batched
from shared.settings import KafkaSettings
from shared.stream.delivery import TP, Batch, OutputStalled, Transport
from shared.stream.settings import StreamSettings
from shared.stream.tables import BatchTable
from shared.topics import Topics

log = logging.getLogger(__name__)
LAG_INTERVAL_S = 5.0  # how often the consumer group's lag is read


class Output(NamedTuple):
    """What a handler returns: records to send, optionally what to run once they are acknowledged,
    and optionally what must also be done before the batch is acked (e.g. a checkpoint that covers
    it: until then its offsets are not committed, so a crash redelivers it)."""

    records: list[OutRecord]
    on_acked: Callable[[], None] | None = None
    hold: Awaitable[Any] | None = None


Handler = Callable[[Batch, dict[str, BatchTable]], "Output | list[OutRecord]"]


@dataclass
class _Stream:
    name: str
    topics: tuple[str, ...]
    handler: Handler
    tables: dict[str, BatchTable]


@dataclass
class Progress:
    """Committed position and lag of the streams' consumer group, for /readyz and metrics."""

    lag: int = -1
    committed: int = -1
    advanced_at: float = field(default_factory=time.monotonic)
    read_at: float = field(default_factory=time.monotonic)  # when the lag was last read


def faust_broker(kafka: KafkaSettings) -> dict[str, Any]:
    """faust broker URL and credentials from the shared Kafka settings."""
    opts: dict[str, Any] = {"broker": [f"kafka://{h.strip()}" for h in kafka.bootstrap_servers.split(",")]}
    kwargs = kafka.client_kwargs()
    if kafka.security_protocol.startswith("SASL"):
        opts["broker_credentials"] = faust.SASLCredentials(
            username=kwargs["sasl_plain_username"], password=kwargs["sasl_plain_password"],
            mechanism=kwargs["sasl_mechanism"], ssl_context=kwargs.get("ssl_context"))
    elif kafka.security_protocol == "SSL":
        opts["broker_credentials"] = faust.SSLCredentials(kwargs["ssl_context"])
    return opts


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # the worker owns the signals
        yield


class HttpService(Service):
    """The service's FastAPI app, served by uvicorn on the worker's event loop."""

    def __init__(self, app: StreamApp, **kwargs: Any):
        super().__init__(**kwargs)
        self.stream_app = app
        self._server: _EmbeddedServer | None = None
        self._serving: asyncio.Future[Any] | None = None

    async def on_start(self) -> None:
        http = self.stream_app.http_app
        if http is None:
            return
        s = self.stream_app.settings
        self._server = _EmbeddedServer(uvicorn.Config(http, host=s.host, port=s.port, log_config=None,
                                                      access_log=False, lifespan="off"))
        self._serving = asyncio.ensure_future(self._server.serve())

    async def on_stop(self) -> None:
        if self._server is not None and self._serving is not None:
            self._server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._serving, 5)


class StreamApp(faust.App):
    """faust app of one stream service (see the module docstring)."""

    def __init__(self, service: str, version: str, settings: StreamSettings, registry: CollectorRegistry):
        self.topic_names = Topics(settings.topic_prefix)
        app_id = self.topic_names.group(service, version)
        super().__init__(
            app_id,
            **faust_broker(settings.kafka),
            store="rocksdb://",  # durable; streams read its partition databases directly
            datadir=str(settings.data_dir / app_id),  # RocksDB files belong to one app id's changelogs
            topic_replication_factor=settings.kafka.replication_factor,
            topic_allow_declare=False,  # every topic comes from the catalogue (create_topics)
            topic_disable_leader=True,
            consumer_auto_offset_reset="earliest",
            broker_commit_interval=settings.commit_interval_s,
            broker_session_timeout=settings.session_timeout_s,
            broker_max_poll_records=settings.max_poll_records,
            producer_acks=-1,
            producer_linger=0.005,  # for faust's own sends (streams hand over closed record batches)
            producer_max_batch_size=256 * 1024,
            key_serializer="raw",
            value_serializer="raw",
            web_enabled=False,  # the service's FastAPI app is served instead (HttpService)
            stream_wait_empty=False,
        )
        self.service, self.settings = service, settings
        self.batch_handlers: dict[str, Callable[[Batch], Any]] = {}
        self.streams: list[_Stream] = []
        self.tables_by_name: dict[str, BatchTable] = {}
        self.http_app: FastAPI | None = None
        self.output_topics: list[str] = []  # what the streams write (created with the sources at start)
        self.progress = Progress()
        self._lag_gauge = Gauge(f"loopline_{service}_lag_records", "Records of the streams not yet committed",
                                registry=registry)
        self._progress_gauge = Gauge(f"loopline_{service}_last_progress_timestamp_seconds",
                                     "When the committed position last advanced (or lag was 0)", registry=registry)
        self._last_queued: asyncio.Future[Any] | None = None
        self._last_stored: asyncio.Future[Any] | None = None
        self._last_flush: asyncio.Future[Any] | None = None
        # the changelog flush being filled: (acknowledged, records, timer)
        self._flush: tuple[asyncio.Future[Any], list[OutRecord], asyncio.TimerHandle] | None = None
        self.task(self._track_lag)

    # ------------------------------------------------------------------ declaring

    def table(self, name: str, partitions: int) -> BatchTable:
        """A bytes -> bytes table with `partitions` partitions (those of the topics its stream reads)."""
        s = self.settings
        # faust's RocksDB defaults (64 MiB x 3 write buffers and a 2 GiB block cache per partition
        # database) let memory grow with every key read; these bound each database.
        options = {"write_buffer_size": s.rocksdb_write_buffer_mib << 20, "max_write_buffer_number": 2,
                   "block_cache_size": s.rocksdb_block_cache_mib << 20}
        changelog = self.topic(self.topic_names.changelog(self.conf.id, name), partitions=partitions,
                               key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
        table = BatchTable(self.Table(name, default=None, partitions=partitions, key_type=bytes,
                                      value_type=bytes, options=options, changelog_topic=changelog))
        self.tables_by_name[name] = table
        return table

    def stream(self, name: str, topics: Sequence[str], handler: Handler, tables: Sequence[BatchTable] = ()) -> None:
        """Call `handler(batch, tables)` for every fetch of new records of `topics`."""
        stream = _Stream(name, tuple(topics), handler, {t.table.name: t for t in tables})
        self.streams.append(stream)
        source = self.topic(*topics, key_type=bytes, value_type=bytes, key_serializer="raw",
                            value_serializer="raw")
        self.topics.add(source)  # subscribe
        for topic in topics:
            self.batch_handlers[topic] = functools.partial(self._process, stream)

    def serve(self, http: FastAPI) -> None:
        """Serve this FastAPI app on the worker's loop (settings.host, settings.port)."""
        self.http_app = http

    def source_topics(self) -> list[str]:
        return list(self.batch_handlers)

    def runtime_topics(self) -> dict[str, int]:
        """Topics the runtime writes besides the streams' output: changelogs, with their partitions."""
        return {t.changelog: t.table.partitions for t in self.tables_by_name.values()}

    async def create_topics(self, outputs: Sequence[str] = ()) -> None:
        """Create the catalogue's topics this app reads and writes, and its changelogs."""
        names = [*self.source_topics(), *outputs]
        await ensure_topics(self.settings.kafka, self.topic_names, names)
        await ensure_topics(self.settings.kafka, self.topic_names, list(self.runtime_topics()),
                            partitions=self.runtime_topics())

    # ------------------------------------------------------------------ faust plumbing

    def _new_transport(self) -> Transport:
        return Transport(self.conf.broker_consumer, self)

    def on_init_dependencies(self) -> Any:
        dependencies = super().on_init_dependencies()  # adds the Monitor to the sensors
        self.sensors.remove(self.monitor)  # per-message statistics for faust's web UI: not used
        return [*dependencies, HttpService(self, loop=self.loop, beacon=self.beacon)]

    @property
    def kafka_producer(self) -> AIOKafkaProducer:
        return self.producer._ensure_producer()

    # ------------------------------------------------------------------ a batch's life

    async def _process(self, stream: _Stream, batch: Batch) -> asyncio.Future[Any]:
        out = stream.handler(batch, stream.tables)
        if not isinstance(out, Output):
            out = Output(out)
        return await self._send(out, list(stream.tables.values()))

    async def _send(self, out: Output, tables: list[BatchTable]) -> asyncio.Future[Any]:
        """Produce a batch's records; once acknowledged, its table writes go to the changelog, then
        (acknowledged too) to RocksDB. Returns what resolves when all of that is done."""
        timeout = self.settings.output_timeout_s
        changes = [(table, table.take_batch()) for table in tables]
        try:  # send_batch waits for room in the producer: as long as the broker does not answer
            sent = await asyncio.wait_for(send_batched(self.kafka_producer, out.records), timeout)
        except asyncio.TimeoutError:
            raise OutputStalled(f"output not accepted by the producer within {timeout:g}s") from None
        output = asyncio.gather(*sent)
        if out.on_acked is not None:
            output.add_done_callback(lambda f: f.cancelled() or f.exception() or out.on_acked())
        loop = asyncio.get_running_loop()
        previous_queued, self._last_queued = self._last_queued, loop.create_future()
        previous_stored, self._last_stored = self._last_stored, loop.create_future()
        queued, stored, done = self._last_queued, self._last_stored, loop.create_future()

        async def store_then_changelog() -> None:
            try:
                try:  # acknowledged in time, or the worker stops (and restarts from its last commit)
                    await asyncio.wait_for(asyncio.shield(output), timeout)
                except asyncio.TimeoutError:
                    raise OutputStalled(f"output not acknowledged within {timeout:g}s") from None
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
                by_changelog = {table.changelog: table for table in self.tables_by_name.values()}
                for meta in metas:
                    by_changelog[meta.topic].persisted(TP(meta.topic, meta.partition), meta.offset)
                stored.set_result(None)
                if out.hold is not None:
                    await out.hold
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

    async def emit(self, records: list[OutRecord]) -> None:
        """Produce records outside any batch (e.g. the result of background work) and wait for their
        acknowledgement; raises if the broker does not acknowledge them in time."""
        timeout = self.settings.output_timeout_s
        try:
            sent = await asyncio.wait_for(send_batched(self.kafka_producer, records), timeout)
            await asyncio.wait_for(asyncio.gather(*sent), timeout)
        except asyncio.TimeoutError:
            raise OutputStalled(f"records not acknowledged within {timeout:g}s") from None

    def _changelog(self, records: list[OutRecord]) -> asyncio.Future[Any]:
        """Queue changelog records for the next flush; returns what resolves (to the flush's
        record metadata) when it is acknowledged."""
        if self._flush is None:
            loop = asyncio.get_running_loop()
            timer = loop.call_later(self.settings.changelog_linger_s, self._send_changelog)
            self._flush = (loop.create_future(), [], timer)
        flushed, pending, _ = self._flush
        pending += records
        if len(pending) >= self.settings.changelog_flush_records:
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
        timeout = self.settings.output_timeout_s
        try:
            if previous is not None:
                await previous  # flushes queue their record batches in order
            sent = await send_batched(self.kafka_producer, records)
            queued.set_result(None)  # aiokafka keeps the order within each partition from here
            try:
                metas = await asyncio.wait_for(asyncio.gather(*sent), timeout)
            except asyncio.TimeoutError:
                raise OutputStalled(f"changelog not acknowledged within {timeout:g}s") from None
        except asyncio.CancelledError:
            for fut in (queued, flushed):
                fut.cancel()
        except Exception as exc:  # noqa: BLE001 - the batches waiting on it crash the worker
            for fut in (queued, flushed):
                if not fut.done():
                    fut.set_exception(exc)
        else:
            flushed.set_result(metas)

    # ------------------------------------------------------------------ health

    def health(self) -> dict[str, Any]:
        """Readiness of the worker: recovered, committing, lag known, output acknowledged."""
        s, p, now = self.settings, self.progress, time.monotonic()
        stalled = p.lag > 0 and now - p.advanced_at > s.stall_after_s
        checks = {"recovered": not self.in_recovery and not self.rebalancing,
                  "progressing": not stalled,
                  "lag_known": p.lag >= 0 and now - p.read_at < s.stall_after_s + LAG_INTERVAL_S,
                  "output_acknowledged": self.consumer.oldest_in_flight_s() < s.stall_after_s}
        assignment = self.consumer.assignment()
        assigned = {stream.name: sum(1 for tp in assignment if tp.topic in stream.topics) for stream in self.streams}
        return {"ready": all(checks.values()), "lag": p.lag, "assigned": assigned, "checks": checks}

    async def _track_lag(self) -> None:
        # From startup on, so /readyz knows the lag at once. A group member that never joins: it
        # only reads the stream group's committed offsets.
        reader = make_consumer(self.settings.kafka, group_id=self.conf.id)
        await reader.start()
        try:
            parts = [TopicPartition(topic, p) for topic in self.source_topics()
                     for p in sorted(await _partitions(reader, topic))]
            while True:
                await self._read_lag(reader, parts)
                await asyncio.sleep(LAG_INTERVAL_S)
        finally:
            await reader.stop()

    async def _read_lag(self, consumer: Any, parts: list[TopicPartition]) -> None:
        """Lag of the streams' consumer group, and when its committed position last moved."""
        try:
            ends = await consumer.end_offsets(parts)
            committed = 0
            for tp in parts:
                committed += (await consumer.committed(tp)) or 0
        except KafkaError as exc:
            log.warning("cannot read consumer lag", extra={"error": repr(exc)})
            return
        p = self.progress
        lag = sum(ends.values()) - committed
        if committed != p.committed or lag == 0:
            p.advanced_at = time.monotonic()
            self._progress_gauge.set(time.time())
        p.committed, p.lag, p.read_at = committed, lag, time.monotonic()
        self._lag_gauge.set(lag)


async def _partitions(consumer: Any, topic: str) -> set[int]:
    for _ in range(100):
        parts = consumer.partitions_for_topic(topic)
        if parts:
            return parts
        await consumer._client.force_metadata_update()  # noqa: SLF001 - metadata of a topic not subscribed to
        await asyncio.sleep(0.1)
    raise RuntimeError(f"topic {topic} has no partitions")
