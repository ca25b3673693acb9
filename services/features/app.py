"""The faust app: agents for features and the label join, tables for their state, HTTP pages.

`create_app(settings)` builds everything (nothing happens at import); `python -m services.features`
runs it as a faust worker. Both agents are batch agents (services/features/runtime.py): one call per
fetch. Processing is at-least-once: a batch's events are acked (their offsets become committable)
only after the broker has acknowledged all of the batch's output, snapshots and table changelogs;
a redelivered event is recognised by its event_id and re-emits an identical snapshot, which
consumers dedup.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from services.features.config import FeaturesSettings
from services.features.domain import (
    EXPIRY, LabelJoin, decode_entry, decode_expiry, encode_entry, entity_key, expiry_key, process_event,
)
from services.features.metrics import FeaturesMetrics
from services.features.offline import OfflineWriter
from services.features.runtime import App, Batch
from shared.features import FeatureEngine
from shared.kafka import OutRecord, dead_letter
from shared.metrics import render
from shared.offline import open_store
from shared.serialization import dumps, loads, parse_time
from shared.spec import load_spec
from shared.topics import Topics

log = logging.getLogger(__name__)
SERVICE = "features"
LAG_INTERVAL_S = 5.0  # how often the consumer lag is read


@dataclass
class Progress:
    """Committed position and lag of the stream, for /readyz and metrics."""

    lag: int = -1
    committed: int = -1
    advanced_at: float = field(default_factory=time.monotonic)


def faust_broker(settings: FeaturesSettings) -> dict[str, Any]:
    """faust broker URL and credentials from the shared Kafka settings."""
    k = settings.kafka
    opts: dict[str, Any] = {"broker": [f"kafka://{h.strip()}" for h in k.bootstrap_servers.split(",")]}
    kwargs = k.client_kwargs()
    if k.security_protocol.startswith("SASL"):
        opts["broker_credentials"] = faust.SASLCredentials(
            username=kwargs["sasl_plain_username"], password=kwargs["sasl_plain_password"],
            mechanism=kwargs["sasl_mechanism"], ssl_context=kwargs.get("ssl_context"))
    elif k.security_protocol == "SSL":
        opts["broker_credentials"] = faust.SSLCredentials(kwargs["ssl_context"])
    return opts


def create_app(settings: FeaturesSettings | None = None) -> faust.App:
    settings = settings or FeaturesSettings()
    spec = load_spec(settings.spec_path)
    engine = FeatureEngine(spec)
    joiner = LabelJoin(spec)
    topics = Topics(settings.topic_prefix)
    metrics = FeaturesMetrics()
    partitions = topics.spec_of(topics["events"]).partitions

    # The app id (consumer group, table changelogs) includes the feature definitions' hash: new
    # definitions start fresh state and recompute from the retained log instead of misreading old state.
    app_id = topics.group("features", f"defs-{engine.feature_hash}")
    app = App(
        app_id,
        **faust_broker(settings),
        store="rocksdb://",  # durable; the batch agents read its partition databases
        datadir=str(settings.data_dir / app_id),  # RocksDB files belong to one app id's changelogs
        topic_partitions=partitions,
        topic_replication_factor=settings.kafka.replication_factor,
        topic_allow_declare=True,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=settings.commit_interval_s,
        broker_session_timeout=settings.session_timeout_s,
        producer_acks=-1,
        # For faust's own sends (the batch agents hand over closed record batches, which never linger).
        producer_linger=0.005,
        producer_max_batch_size=256 * 1024,
        key_serializer="raw",
        value_serializer="raw",
        web_enabled=True,
        web_bind=settings.host,
        web_port=settings.port,
        web_host=settings.host,
        stream_wait_empty=False,
        # records per fetch, i.e. per batch (faust: unlimited): bounds the memory of the batches in flight
        broker_max_poll_records=1000,
    )

    events_t = app.topic(topics["events"], key_type=bytes, value_type=bytes, key_serializer="raw",
                         value_serializer="raw", partitions=partitions)
    dlq_name = topics["events.dlq"]
    features_name, by_event_name = topics["features"], topics["snapshots.by-event"]
    examples_name, labels_name = topics["training-examples"], topics["labels"]
    join_source = app.topic(topics["snapshots.by-event"], topics["labels"], key_type=bytes, value_type=bytes,
                            key_serializer="raw", value_serializer="raw")

    # faust's RocksDB defaults (64 MiB x 3 write buffers and a 2 GiB block cache per partition
    # database) let memory grow with every entity read; these bound each database.
    rocksdb = {"write_buffer_size": settings.rocksdb_write_buffer_mib << 20, "max_write_buffer_number": 2,
               "block_cache_size": settings.rocksdb_block_cache_mib << 20}
    state = app.batch_table(app.Table("entity-state", default=None, partitions=partitions,
                                      key_type=bytes, value_type=bytes, options=rocksdb))
    joins = app.batch_table(app.Table("label-join", default=None, partitions=partitions,
                                      key_type=bytes, value_type=bytes, options=rocksdb))

    def dead_letter(msg: Any, reason: str, code: str) -> OutRecord:
        return dead_letter(dlq_name, msg, ValueError(reason), SERVICE, code)

    @app.batch_agent(events_t)
    async def compute_features(batch: Batch) -> asyncio.Future[Any]:
        out: list[OutRecord] = []
        ingested: list[str] = []
        for tp, messages in batch.items():
            p = tp.partition
            for msg in messages:
                record = loads(msg.value)
                key = entity_key(record).encode()
                res = process_event(engine, state.get(p, key), record)
                metrics.events.labels(res.status).inc()
                if res.status == "late":
                    metrics.late.inc()
                    out.append(dead_letter(msg, res.reason, "late"))
                    continue
                if res.state is not None:
                    state.set(p, key, res.state)
                else:
                    state.resend(p, key)  # a redelivery: make sure the changelog has what the store has
                if res.snapshot is not None:
                    value = dumps(res.snapshot)
                    out.append(OutRecord(features_name, key, value))
                    out.append(OutRecord(by_event_name, record["event_id"].encode(), value))
                    ingested.append(record["ingested_at"])
        def observe(_: Any) -> None:  # when the snapshots are acknowledged
            now = time.time()
            for at in ingested:
                metrics.snapshot_latency.observe(max(0.0, now - parse_time(at).timestamp()))
        return await app.send_all(out, on_output=observe)

    # Join entries expire by stream time (the newest snapshot event time seen on the partition).
    # The join table also holds an expiry index, sorted by time: RocksDB keeps it, not memory.
    stream_time: dict[int, float] = defaultdict(float)

    def expires(entry: dict[str, Any] | None) -> float | None:
        return None if entry is None else entry["t"] + joiner.max_delay

    def sweep(p: int) -> None:
        now = stream_time[p]
        due = []
        for index_key, _ in joins.items_from(p, EXPIRY):
            at, key = decode_expiry(index_key)
            if at >= now:
                break
            due.append((index_key, key))
        for index_key, key in due:
            joins.delete(p, index_key)
            entry = decode_entry(joins.get(p, key))
            if entry is not None and (kind := joiner.expired(entry, now)) is not None:
                metrics.expired.labels(kind).inc()
                joins.delete(p, key)

    @app.batch_agent(join_source)
    async def join_labels(batch: Batch) -> asyncio.Future[Any]:
        out: list[OutRecord] = []
        for tp, messages in batch.items():
            p = tp.partition
            for msg in messages:
                record = loads(msg.value)
                key = msg.key
                entry = decode_entry(joins.get(p, key))
                if tp.topic == labels_name:
                    res = joiner.on_label(entry, record)
                    metrics.labels.labels(res.status).inc()
                else:
                    res = joiner.on_snapshot(entry, record)
                    if res.entry is not None:
                        stream_time[p] = max(stream_time[p], res.entry["t"])
                if res.status in ("conflict", "late_label"):
                    out.append(dead_letter(msg, res.reason, res.status))
                if res.entry is not None:
                    joins.set(p, key, encode_entry(res.entry))
                    if (at := expires(res.entry)) != (before := expires(entry)):
                        if before is not None:
                            joins.delete(p, expiry_key(before, key))
                        joins.set(p, expiry_key(at, key), b"")
                elif entry is not None:
                    joins.resend(p, key)  # a redelivery (see compute_features)
                if res.example is not None:
                    out.append(OutRecord(examples_name, entity_key(res.example).encode(), dumps(res.example)))
                    metrics.examples.inc()
            sweep(p)
        return await app.send_all(out)

    progress = Progress()
    offline = OfflineWriter(settings, topics, open_store(settings.offline_url, spec), metrics) \
        if settings.offline else None

    if offline is not None:
        @app.task
        async def write_offline() -> None:
            await offline.run(app)

    event_parts = [TopicPartition(topics["events"], p) for p in range(partitions)]

    @app.task
    async def track_lag() -> None:
        # From startup on, so /readyz knows the lag at once. A group member that never joins: it
        # only reads the stream group's committed offsets.
        reader = AIOKafkaConsumer(**settings.kafka.client_kwargs(), group_id=app.conf.id,
                                  enable_auto_commit=False)
        await reader.start()
        try:
            while True:
                await _track(reader, event_parts, progress, metrics)
                await asyncio.sleep(LAG_INTERVAL_S)
        finally:
            await reader.stop()

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        return web.json({"status": "ok"})

    @app.page("/readyz")
    async def readyz(web: Any, request: Any) -> Any:
        stalled = progress.lag > 0 and time.monotonic() - progress.advanced_at > settings.stall_after_s
        checks = {"recovered": not app.in_recovery and not app.rebalancing,
                  "progressing": not stalled, "lag_known": progress.lag >= 0}
        ok = all(checks.values())
        assigned = sum(1 for tp in app.consumer.assignment() if tp.topic == topics["events"])
        return web.json({"ready": ok, "lag": progress.lag, "assigned": assigned, "checks": checks},
                        status=200 if ok else 503)

    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        body, content_type = render(metrics.registry)
        # aiohttp wants the charset apart from the content type
        return web.bytes(body, content_type=content_type.split(";")[0] + "; version=0.0.4")

    app.loopline = {"engine": engine, "topics": topics, "metrics": metrics, "settings": settings,
                    "agents": (compute_features, join_labels)}
    return app


async def _track(consumer: AIOKafkaConsumer, parts: list[TopicPartition], progress: Progress,
                 metrics: FeaturesMetrics) -> None:
    """Lag of the feature stream's consumer group, and when its committed position last moved."""
    try:
        ends = await consumer.end_offsets(parts)
        committed = 0
        for tp in parts:
            committed += (await consumer.committed(tp)) or 0
    except KafkaError as exc:
        log.warning("cannot read consumer lag", extra={"error": repr(exc)})
        return
    lag = sum(ends.values()) - committed
    if committed != progress.committed or lag == 0:
        progress.advanced_at = time.monotonic()
        metrics.last_progress.set(time.time())
    progress.committed, progress.lag = committed, lag
    metrics.lag.set(lag)
