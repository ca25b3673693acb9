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
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from services.features.config import FeaturesSettings
from services.features.domain import (
    JoinTable, LabelClock, LabelJoin, LateEvent, Rejected, decode_event, decode_join_input, entity_key,
    process_event,
)
from services.features.metrics import FeaturesMetrics
from services.features.offline import OfflineWriter
from services.features.runtime import App, Batch
from shared.features import FeatureEngine, FeatureStore
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
    read_at: float = field(default_factory=time.monotonic)  # when the lag was last read


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
    app.output_timeout_s = settings.output_timeout_s

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

    store = FeatureStore(engine, cache_events=settings.cache_events, cache_entities=settings.cache_entities)
    state_views = {p: state.view(p) for p in range(partitions)}
    join_views = {p: joins.view(p) for p in range(partitions)}

    @app.on_partitions_revoked.connect
    async def forget_cached_states(app: Any, revoked: Any, **kwargs: Any) -> None:
        store.drop()  # another worker may change these entities now; the table holds the truth

    @app.batch_agent(events_t)
    async def compute_features(batch: Batch) -> asyncio.Future[Any]:
        out: list[OutRecord] = []
        ingested: list[str] = []
        now = time.time()
        store.new_batch()
        for tp, messages in batch.items():
            p = tp.partition
            view = state_views[p]
            for msg in messages:
                try:
                    record = decode_event(msg.value)
                    res = process_event(store, view, p, record, now=now, max_future_s=settings.max_future_s,
                                        max_bytes=settings.max_snapshot_bytes)
                except Rejected as exc:  # this record only: dead-lettered with its reason, the worker goes on
                    metrics.events.labels(exc.code).inc()
                    out.append(dead_letter(dlq_name, msg, exc, SERVICE, exc.code))
                    continue
                metrics.events.labels(res.status).inc()
                if res.status == "late":
                    metrics.late.inc()
                    out.append(dead_letter(dlq_name, msg, LateEvent(res.reason), SERVICE, "late"))
                    continue
                out.append(OutRecord(features_name, entity_key(record).encode(), res.snapshot))
                out.append(OutRecord(by_event_name, record["event_id"].encode(), res.snapshot))
                ingested.append(record["ingested_at"])

        def observe(_: Any) -> None:  # when the snapshots are acknowledged
            now = time.time()
            for at in ingested:
                metrics.snapshot_latency.observe(max(0.0, now - parse_time(at).timestamp()))
        return await app.send_all(out, on_output=observe)

    joined = JoinTable(LabelJoin(spec, settings.join_wall_grace_s))
    clock = LabelClock()

    @app.batch_agent(join_source)
    async def join_labels(batch: Batch) -> asyncio.Future[Any]:
        out: list[OutRecord] = []
        now = time.time()
        for tp, messages in batch.items():
            p = tp.partition
            view = join_views[p]
            kind = "label" if tp.topic == labels_name else "snapshot"
            for msg in messages:
                try:
                    record = decode_join_input(kind, msg.value, now=now, max_future_s=settings.max_future_s)
                except Rejected as exc:
                    (metrics.labels if kind == "label" else metrics.events).labels(exc.code).inc()
                    out.append(dead_letter(dlq_name, msg, exc, SERVICE, exc.code))
                    continue
                if kind == "label":
                    clock.observe(p, parse_time(record["occurred_at"]).timestamp())
                res = joined.apply(view, msg.key, kind, record, [tp.topic, p, msg.offset], now)
                if kind == "label":
                    metrics.labels.labels(res.status).inc()
                if res.status in ("conflict", "late_label", "label_before_event"):
                    out.append(dead_letter(dlq_name, msg, Rejected(res.status, res.reason), SERVICE, res.status))
                if res.example is not None:
                    out.append(OutRecord(examples_name, entity_key(res.example).encode(), dumps(res.example)))
                    metrics.examples.inc()
            for gone in joined.sweep(view, clock.now(p), now):
                metrics.expired.labels(gone.kind).inc()
                if gone.record is not None:
                    source = SimpleNamespace(topic=gone.src[0], partition=gone.src[1], offset=gone.src[2],
                                             key=gone.key, value=dumps(gone.record), headers=None)
                    code = "unlabelled" if gone.kind == "snapshot" else "unmatched_label"
                    out.append(dead_letter(dlq_name, source, Rejected(code, gone.reason), SERVICE, code))
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
        now = time.monotonic()
        stalled = progress.lag > 0 and now - progress.advanced_at > settings.stall_after_s
        checks = {"recovered": not app.in_recovery and not app.rebalancing,
                  "progressing": not stalled,
                  "lag_known": progress.lag >= 0 and now - progress.read_at < settings.stall_after_s + LAG_INTERVAL_S,
                  "output_acknowledged": app.consumer.oldest_in_flight_s() < settings.stall_after_s}
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
    progress.committed, progress.lag, progress.read_at = committed, lag, time.monotonic()
    metrics.lag.set(lag)
