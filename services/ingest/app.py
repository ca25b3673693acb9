"""App factory: wires settings, spec, Kafka link and raw bridge; starts and stops them in the lifespan."""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta

from fastapi import FastAPI

from services.ingest.api import build_router
from services.ingest.bridge import RawBridge
from services.ingest.config import IngestSettings
from services.ingest.domain import Limits
from services.ingest.metrics import IngestMetrics
from services.ingest.publisher import Publisher
from shared.events import EventValidator
from shared.kafka import ensure_topics
from shared.spec import PipelineSpec, load_spec
from shared.topics import Topics

log = logging.getLogger(__name__)
# What ingest reads (the raw bridge) and writes: the topics it creates when missing. Every service
# creates its own, so each needs CREATE only on those (docs/architecture.md, "ACL layout").
TOPICS = ("events.raw", "labels.raw", "events", "labels", "events.dlq")


@dataclass
class IngestContext:
    settings: IngestSettings
    spec: PipelineSpec
    validator: EventValidator
    topics: Topics
    publisher: Publisher
    metrics: IngestMetrics
    limits: Limits
    bridge: RawBridge | None = None


async def _supervise(ctx: IngestContext, stop: asyncio.Event) -> None:
    """Connect (retrying), create topics, start the bridge, then probe Kafka until stopped."""
    s = ctx.settings
    await ctx.publisher.connect(stop)
    if stop.is_set():
        return
    await ensure_topics(s.kafka, ctx.topics, [ctx.topics[name] for name in TOPICS])
    bridge_task = None
    if ctx.bridge is not None:
        bridge_task = asyncio.create_task(ctx.bridge.run(ctx.topics.group("ingest", "raw"), stop))
    try:
        while not stop.is_set():
            ctx.metrics.kafka_up.set(1 if await ctx.publisher.probe() else 0)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), s.health_interval_s)
    finally:
        if bridge_task is not None:
            await bridge_task


def limits_of(settings: IngestSettings) -> Limits:
    """The per-record rules of these settings."""
    return Limits(max_record_bytes=settings.max_record_bytes, max_future=timedelta(seconds=settings.max_future_s))


def create_app(settings: IngestSettings | None = None) -> FastAPI:
    settings = settings or IngestSettings()
    spec = load_spec(settings.spec_path)
    metrics = IngestMetrics()
    topics = Topics(settings.topic_prefix)
    validator = EventValidator(spec)
    publisher = Publisher(settings.kafka, settings.produce_timeout_s)
    limits = limits_of(settings)
    ctx = IngestContext(settings, spec, validator, topics, publisher, metrics, limits)
    if settings.raw_bridge:
        ctx.bridge = RawBridge(settings.kafka, topics, validator, publisher, metrics, limits,
                               stall_after_s=settings.bridge_stall_after_s)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stop = asyncio.Event()
        task = asyncio.create_task(_supervise(ctx, stop))
        try:
            yield
        finally:
            stop.set()
            try:
                await asyncio.wait_for(task, 30)
            except Exception:  # noqa: BLE001 - shutting down; report and go on closing the producer
                log.exception("ingest supervisor did not stop cleanly")
            await publisher.stop()

    app = FastAPI(
        title=f"Loopline ingest — {spec.name}",
        version="1",
        description="Events and labels in, validated against the pipeline spec, acknowledged only "
                    "after Kafka has them (acks=all).",
        lifespan=lifespan,
    )
    app.state.ctx = ctx
    app.include_router(build_router(ctx))
    return app
