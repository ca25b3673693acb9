"""The faust app: agents for features and the label join, tables for their state, HTTP pages.

`create_app(settings)` builds everything (nothing happens at import); `python -m services.features`
runs it as a faust worker; FEATURES_ROLE picks the agents (both, or one of them). Processing is
at-least-once, in batches (runtime.batches): a batch's snapshots are acknowledged before its new
states are stored, faust flushes the producer before it commits offsets, and a redelivered event is
recognised by its event_id and re-emits an identical snapshot, which consumers dedup.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from services.features.config import FeaturesSettings
from services.features.domain import LabelJoin, decode_entry, encode_entry, entity_key, entry_header, process_event
from services.features.metrics import FeaturesMetrics
from services.features.offline import OfflineWriter
from services.features.runtime import App, Table, batches, use_event
from shared.features import FeatureEngine
from shared.kafka import OutRecord, dead_letter_headers, send_batched
from shared.metrics import render
from shared.offline import open_store
from shared.serialization import dumps, loads, parse_time
from shared.spec import load_spec
from shared.topics import Topics

log = logging.getLogger(__name__)
SERVICE = "features"


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
    # The join role on its own is a group of its own (same tables as "all" otherwise).
    app_id = topics.group("features-join" if settings.role == "join" else "features", f"defs-{engine.feature_hash}")
    app = App(
        app_id,
        **faust_broker(settings),
        store=settings.store,
        datadir=str(settings.data_dir / app_id),  # RocksDB files belong to one app id's changelogs
        topic_partitions=partitions,
        topic_replication_factor=settings.kafka.replication_factor,
        topic_allow_declare=True,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=settings.commit_interval_s,
        broker_session_timeout=settings.session_timeout_s,
        producer_acks=-1,
        # Without linger every send is its own produce request (measured: ~300 events/s).
        producer_linger=0.005,
        producer_max_batch_size=256 * 1024,
        key_serializer="raw",
        value_serializer="raw",
        web_enabled=True,
        web_bind=settings.host,
        web_port=settings.port,
        web_host=settings.host,
        stream_wait_empty=True,  # see runtime.batches: rebalances wait for the batch in hand
    )

    def topic(base: str) -> faust.TopicT:
        return app.topic(topics[base], key_type=bytes, value_type=bytes, key_serializer="raw",
                         value_serializer="raw", partitions=topics.spec_of(topics[base]).partitions)

    events_t, dlq_t = topic("events"), topic("events.dlq")
    features_name, by_event_name = topics["features"], topics["snapshots.by-event"]
    examples_name = topics["training-examples"]
    join_source = app.topic(topics["snapshots.by-event"], topics["labels"], key_type=bytes, value_type=bytes,
                            key_serializer="raw", value_serializer="raw")

    # faust's RocksDB defaults (64 MiB x 3 write buffers and a 2 GiB block cache per partition
    # database) let memory grow with every entity read; these bound each database.
    rocksdb = {"write_buffer_size": settings.rocksdb_write_buffer_mib << 20, "max_write_buffer_number": 2,
               "block_cache_size": settings.rocksdb_block_cache_mib << 20}

    def table(name: str) -> Table:
        return app.tables.add(Table(app, name=name, default=None, partitions=partitions, key_type=bytes,
                                    value_type=bytes, options=rocksdb))

    def producer() -> AIOKafkaProducer:
        # Straight to the transport's aiokafka producer and its batch API: faust's Topic.send
        # (FutureMessage, callbacks) and send() per record cost several times more. faust still
        # flushes this producer before it commits offsets, so at-least-once holds.
        return app.producer._ensure_producer()

    async def dead_letter(event: faust.EventT, reason: str, code: str) -> None:
        msg = event.message
        headers = dead_letter_headers(msg, ValueError(reason), SERVICE, code)
        await dlq_t.send(key=event.key, value=event.value, headers=headers)

    def features_role() -> faust.types.AgentT:
        state_table = table("entity-state")
        read_state = state_table.read
        outcomes = {s: metrics.events.labels(s) for s in ("new", "duplicate", "late", "unknowable")}
        observe_latency = metrics.snapshot_latency.observe

        @app.agent(events_t)
        async def compute_features(stream: faust.StreamT) -> None:
            # In batches: the records of a batch reach the producer together (few, full produce
            # requests instead of one per event) and each entity's state is written once per batch.
            # A batch's events are acked only after this loop body has finished with them.
            async for events in batches(stream, settings.batch_max):
                states: dict[bytes, tuple[bytes, faust.EventT]] = {}
                out_records: list[OutRecord] = []
                for event in events:
                    record = loads(event.value)
                    key = entity_key(record).encode()
                    use_event(event)
                    out = process_event(engine, states[key][0] if key in states else read_state(key), record)
                    outcomes[out.status].inc()
                    if out.status == "late":
                        metrics.late.inc()
                        await dead_letter(event, out.reason, "late")
                        continue
                    if out.state is not None:
                        states[key] = (out.state, event)
                    if out.snapshot is not None:
                        value = dumps(out.snapshot)
                        out_records.append(OutRecord(features_name, key, value))
                        out_records.append(OutRecord(by_event_name, record["event_id"].encode(), value))
                        observe_latency(max(0.0, time.time() - parse_time(record["ingested_at"]).timestamp()))
                # Snapshots first, acknowledged, and only then the new states: if the worker dies in
                # between, the redelivered events are new again and yield the same snapshots. The
                # other order could leave a state holding events whose snapshots were never sent
                # (a redelivered duplicate cannot always rebuild its snapshot once old events are evicted).
                await asyncio.gather(*await send_batched(producer(), out_records))
                for key, (state, event) in states.items():
                    use_event(event)  # its partition's database and changelog partition
                    state_table.put(key, state)
                await state_table.flush_changelog()

        return compute_features

    def join_role() -> faust.types.AgentT:
        join_table = table("label-join")
        # Join entries expire by stream time: the newest snapshot event time seen on their partition.
        # A sweep scans the local join table (entry headers only) whenever some partition's stream
        # time has moved on by a twentieth of the max delay: no index in memory, so memory does not
        # grow with the number of snapshots waiting for labels; expiry is at most that much late.
        stream_time: dict[int, float] = defaultdict(float)
        swept_at: dict[int, float] = defaultdict(float)
        sweep_every = max(1.0, joiner.max_delay / 20)

        def sweep() -> None:
            expired = []
            for key, value in join_table.data.items():
                t, p = entry_header(value)
                if t + joiner.max_delay < stream_time[p]:
                    kind = joiner.expired(decode_entry(value), stream_time[p])
                    if kind is not None:
                        expired.append((key, p, kind))
            for key, p, kind in expired:
                join_table.delete(key, p)
                metrics.expired.labels(kind).inc()
            swept_at.update(stream_time)

        label_outcomes = {s: metrics.labels.labels(s)
                          for s in ("waiting", "joined", "duplicate", "conflict", "late_label")}

        @app.agent(join_source)
        async def join_labels(stream: faust.StreamT) -> None:
            async for events in batches(stream, settings.batch_max):
                examples: list[OutRecord] = []
                for event in events:
                    msg = event.message
                    use_event(event)
                    record = loads(event.value)
                    key = event.key
                    entry = decode_entry(join_table.read(key))
                    if msg.topic == topics["labels"]:
                        out = joiner.on_label(entry, record)
                        label_outcomes[out.status].inc()
                    else:
                        out = joiner.on_snapshot(entry, record)
                        if out.entry is not None:
                            stream_time[msg.partition] = max(stream_time[msg.partition], out.entry["t"])
                    if out.status in ("conflict", "late_label"):
                        await dead_letter(event, out.reason, out.status)
                    if out.entry is not None:
                        join_table.put(key, encode_entry(out.entry, msg.partition))
                    if out.example is not None:
                        examples.append(OutRecord(examples_name, entity_key(out.example).encode(), dumps(out.example)))
                if any(now - swept_at[p] >= sweep_every for p, now in stream_time.items()):
                    sweep()
                await join_table.flush_changelog()
                await send_batched(producer(), examples)
                metrics.examples.inc(len(examples))

        return join_labels

    agents = []
    if settings.role in ("all", "features"):
        agents.append(features_role())
    if settings.role in ("all", "join"):
        agents.append(join_role())
    sources = [name for agent in agents for name in agent.channel.topics]

    progress = Progress()
    offline = OfflineWriter(settings, topics, open_store(settings.offline_url, spec), metrics) \
        if settings.offline and settings.role != "join" else None

    if offline is not None:
        @app.task
        async def write_offline() -> None:
            await offline.run(app)

    source_parts = [TopicPartition(name, p) for name in sources for p in range(partitions)]
    lag_reader: list[AIOKafkaConsumer] = []

    @app.timer(5.0)
    async def track_lag() -> None:
        if not lag_reader:
            # A group member that never joins: it only reads the stream group's committed offsets.
            reader = AIOKafkaConsumer(**settings.kafka.client_kwargs(), group_id=app.conf.id,
                                      enable_auto_commit=False)
            await reader.start()
            lag_reader.append(reader)
        await _track(lag_reader[0], source_parts, progress, metrics)

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        return web.json({"status": "ok"})

    @app.page("/readyz")
    async def readyz(web: Any, request: Any) -> Any:
        stalled = progress.lag > 0 and time.monotonic() - progress.advanced_at > settings.stall_after_s
        checks = {"recovered": not app.in_recovery and not app.rebalancing,
                  "progressing": not stalled, "lag_known": progress.lag >= 0}
        ok = all(checks.values())
        # partitions of the role's first source topic (events; snapshots.by-event for the join)
        assigned = sum(1 for tp in app.consumer.assignment() if tp.topic == sources[0])
        return web.json({"ready": ok, "lag": progress.lag, "assigned": assigned, "checks": checks},
                        status=200 if ok else 503)

    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        body, content_type = render(metrics.registry)
        # aiohttp wants the charset apart from the content type
        return web.bytes(body, content_type=content_type.split(";")[0] + "; version=0.0.4")

    app.loopline = {"engine": engine, "topics": topics, "metrics": metrics, "settings": settings,
                    "agents": agents}
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
