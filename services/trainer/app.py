"""Wiring of the trainer: its stream app, streams, background tasks and HTTP routes.

`create_app(settings, registry)` builds everything (nothing happens at import); `python -m
services.trainer` reads the registry from the `models` topic first, then runs the app. One trainer
runs per pipeline (its online models learn from every example, in one order).
"""
from __future__ import annotations

import asyncio
import logging

from fastapi import FastAPI

from services.trainer.api import build_router
from services.trainer.config import TrainerSettings
from services.trainer.domain import Rejected, decode_example
from services.trainer.metrics import TrainerMetrics
from services.trainer.service import Trainer
from services.trainer.streams import AlertStream, ExampleStream
from shared.auth import ApiKeys
from shared.registry import Registry, follow_registry
from shared.kafka import make_consumer, partitions_of, read_range
from shared.spec import load_spec
from shared.stream import StreamApp
from shared.topics import Topics

log = logging.getLogger(__name__)
OUTPUTS = ("models", "events.dlq")


def create_app(settings: TrainerSettings | None = None, registry: Registry | None = None,
               registry_offsets: dict[int, int] | None = None) -> StreamApp:
    settings = settings or TrainerSettings()
    spec = load_spec(settings.spec_path)
    topics = Topics(settings.topic_prefix)
    metrics = TrainerMetrics()
    registry = registry or Registry()
    trainer = Trainer(spec, settings, registry, metrics)

    app = StreamApp("trainer", f"spec-{spec.name}", settings, metrics.registry)
    app.output_topics = [topics[name] for name in OUTPUTS]
    app.stream("examples", [topics["training-examples"]], ExampleStream(trainer, topics, metrics))
    app.stream("alerts", [topics["alerts"]], AlertStream(trainer, topics))

    @app.task
    async def checkpoint_when_idle() -> None:
        # An online version is due T seconds after the last one even when no example comes to carry
        # it; a scheduled retrain is due whether examples come or not.
        while True:
            await asyncio.sleep(1.0)
            if trainer.triggers.due():
                trainer.retrain_wanted.set()
            records, done = trainer.checkpoint_records()
            if records:
                await app.emit(records)
            if done is not None and not done.done():
                done.set_result(None)

    @app.task
    async def retrain() -> None:
        await trainer.retrain_loop(app.emit)

    @app.task
    async def follow() -> None:
        await follow_registry(settings.kafka, topics["models"], registry, registry_offsets or {})

    @app.task
    async def fill_window() -> None:
        await prefill(trainer, settings, topics)

    http = FastAPI(title=f"Loopline trainer — {spec.name}", version="1",
                   description="Online and batch training, metric gates and the model registry.")
    http.include_router(build_router(app, trainer, metrics, ApiKeys(settings.api_keys)))
    app.serve(http)
    app.trainer = trainer  # for tests and the CLI
    return app


async def prefill(trainer: Trainer, settings: TrainerSettings, topics: Topics) -> None:
    """Fill the training window with the most recent examples already on the topic (the stream
    adds new ones; the window keeps each event id once)."""
    if not trainer.batch:
        return  # no batch candidate: no window to fill
    topic = topics["training-examples"]
    consumer = make_consumer(settings.kafka, group_id=None)
    await consumer.start()
    try:
        from aiokafka import TopicPartition
        parts = [TopicPartition(topic, p) for p in sorted(await partitions_of(consumer, topic))]
        ends = await consumer.end_offsets(parts)
        begins = await consumer.beginning_offsets(parts)
        share = -(-trainer.window.capacity // max(1, len(parts)))
        bounds = {tp: (max(begins[tp], ends[tp] - share), ends[tp]) for tp in parts if ends[tp] > begins[tp]}
        if not bounds:
            return
        async for r in read_range(consumer, bounds):
            try:
                trainer.window.add(decode_example(trainer.spec, r.value))
            except Rejected:
                pass  # the stream dead-letters it when it reads it
        log.info("training window prefilled", extra={"examples": len(trainer.window)})
        trainer.metrics.window_examples.set(len(trainer.window))
        if trainer.first_fit_due():
            trainer.retrain_wanted.set()
    finally:
        await consumer.stop()
