"""Wiring of serving: the context (spec, validator, engine, replica, models, prediction log), the
FastAPI app, and a lifespan that starts and stops the Kafka clients and the background tasks.

`create_app(settings)` builds everything (nothing happens at import); `python -m services.serving`
runs it with uvicorn. Serving scales out by running more replicas (each keeps its own replica of the
feature state)."""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from aiokafka import AIOKafkaProducer
from fastapi import FastAPI

from services.serving.api import build_router
from services.serving.config import ServingSettings
from services.serving.metrics import ServingMetrics
from services.serving.models import Models
from services.serving.predlog import PredictionLog
from services.serving.replica import StateReplica
from shared.auth import ApiKeys
from shared.events import EventValidator
from shared.features import FeatureEngine
from shared.kafka import OutRecord, ensure_topics, make_producer, send_batched
from shared.metrics import freeze_heap, gc_pauses
from shared.registry import ArtifactStore, Registry, follow_registry, read_registry
from shared.spec import PipelineSpec, load_spec
from shared.topics import Topics

log = logging.getLogger(__name__)


@dataclass
class ServingContext:
    settings: ServingSettings
    spec: PipelineSpec
    topics: Topics
    metrics: ServingMetrics
    validator: EventValidator
    engine: FeatureEngine
    replica: StateReplica
    models: Models
    log: PredictionLog
    keys: ApiKeys
    registry: Registry = field(default_factory=Registry)
    producer: AIOKafkaProducer | None = None
    inflight: int = 0
    registry_loaded: bool = False

    @property
    def max_future(self) -> timedelta:
        return timedelta(seconds=self.settings.max_future_s)

    async def forward_events(self, records: list[OutRecord]) -> None:
        assert self.producer is not None
        await asyncio.gather(*await send_batched(self.producer, records))
        self.metrics.forwarded.inc(len(records))

    def ready(self) -> bool:
        return self.not_ready_reason() == ""

    def not_ready_reason(self) -> str:
        if not self.registry_loaded:
            return "the model registry is not read yet"
        if self.models.deployment.champion is None:
            return "no model is loaded yet"
        if not self.replica.caught_up:
            return "the feature state replica is catching up"
        return ""

    def readiness(self) -> dict[str, Any]:
        problems = {}
        if reason := self.not_ready_reason():
            problems["serving"] = reason
        if problem := self.log.problem():
            problems["prediction_log"] = problem
        checks = {"registry": self.registry_loaded, "model": self.models.deployment.champion is not None,
                  "state_caught_up": self.replica.caught_up, "prediction_log": "prediction_log" not in problems}
        return {"ready": not problems, "checks": checks, "problems": problems,
                "replica_lag_records": self.replica.lag, "replica_positions": self.replica.positions}


def create_app(settings: ServingSettings | None = None) -> FastAPI:
    settings = settings or ServingSettings()
    spec = load_spec(settings.spec_path)
    topics = Topics(settings.topic_prefix)
    metrics = ServingMetrics()
    engine = FeatureEngine(spec)
    key = settings.signing_key.get_secret_value().encode() if settings.signing_key else None
    ctx = ServingContext(
        settings, spec, topics, metrics, EventValidator(spec), engine,
        StateReplica(settings.kafka, topics, engine, settings.data_dir, metrics, cache_events=settings.cache_events,
                     cache_entities=settings.cache_entities),
        Models(spec, ArtifactStore(settings.artifact_url), key, metrics),
        PredictionLog(settings.log_buffer, metrics, settings.log_linger_ms / 1000), ApiKeys(settings.api_keys))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        with gc_pauses(metrics.gc_pauses):
            tasks: list[asyncio.Task[Any]] = []
            try:
                await ensure_topics(settings.kafka, topics, [topics["models"], topics["predictions"], topics["events"]])
                # aiokafka queues one batch per partition and has one request in flight: when requests keep
                # the event loop busy a round trip takes long, so the log moves ~1 MB a partition per trip
                # (the broker's default message.max.bytes is 1 MiB + 12)
                ctx.producer = make_producer(settings.kafka, max_batch_size=1_000_000, max_request_size=16 << 20)
                await ctx.producer.start()
                registry, offsets = await read_registry(settings.kafka, topics["models"])
                ctx.registry = registry
                await ctx.models.reconcile(registry)
                ctx.registry_loaded = True
                freeze_heap()  # imports and the loaded models: full collections no longer walk them
                tasks = [asyncio.create_task(coro) for coro in (
                    ctx.replica.run(),
                    follow_registry(settings.kafka, topics["models"], registry, offsets,
                                    on_change=lambda _: ctx.models.wanted()),
                    ctx.models.follow(registry),
                    ctx.log.run(ctx.producer),
                )]
                yield
            finally:
                await ctx.log.drain(timeout_s=10)
                for task in tasks:
                    task.cancel()
                for task in tasks:
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
                if ctx.producer is not None:
                    await ctx.producer.stop()
                ctx.replica.close()

    app = FastAPI(title=f"Loopline serving — {spec.name}", version="1", lifespan=lifespan,
                  description="Predictions with request-time features computed from each entity's state by the "
                              "same engine the feature service runs; every prediction is logged to `predictions`.")
    app.state.ctx = ctx
    app.include_router(build_router(ctx))
    return app
