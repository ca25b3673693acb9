"""Wiring of the feature service: its stream app, tables, streams, offline writer and HTTP routes.

`create_app(settings)` builds everything (nothing happens at import); `python -m services.features`
runs it (shared.stream.worker). Processing is at-least-once: a batch's events are acked only after
the broker has acknowledged all of the batch's output and table changelogs; a redelivered event is
recognised by its event_id and re-emits the identical snapshot, which consumers dedup.
"""
from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI

from services.features.api import build_router
from services.features.config import FeaturesSettings
from services.features.domain import JoinTable, LabelClock, LabelJoin
from services.features.metrics import FeaturesMetrics
from services.features.offline import OfflineWriter
from services.features.streams import JOINS, STATE, EventStream, JoinStream
from shared.features import FeatureEngine, FeatureStore
from shared.offline import open_store
from shared.spec import load_spec
from shared.stream import StreamApp
from shared.topics import Topics

# Topics the service writes besides its tables' changelogs (created at start with its sources).
OUTPUTS = ("features", "snapshots.by-event", "training-examples", "events.dlq")


def create_app(settings: FeaturesSettings | None = None) -> StreamApp:
    settings = settings or FeaturesSettings()
    spec = load_spec(settings.spec_path)
    engine = FeatureEngine(spec)
    topics = Topics(settings.topic_prefix)
    metrics = FeaturesMetrics()
    partitions = topics.spec_of(topics["events"]).partitions

    # The app id (consumer group, table changelogs) includes the feature definitions' hash: new
    # definitions start fresh state that recomputes from the retained log instead of misreading old state.
    app = StreamApp("features", f"defs-{engine.feature_hash}", settings, metrics.registry)
    app.output_topics = [topics[name] for name in OUTPUTS]
    state = app.table(STATE, partitions)
    joins = app.table(JOINS, partitions)
    store = FeatureStore(engine, cache_events=settings.cache_events, cache_entities=settings.cache_entities)
    app.stream("features", [topics["events"]], EventStream(store, settings, topics, metrics), tables=[state])
    app.stream("join", [topics["snapshots.by-event"], topics["labels"]],
               JoinStream(JoinTable(LabelJoin(spec, settings.join_wall_grace_s)), settings, topics, metrics,
                          LabelClock()), tables=[joins])

    @app.on_partitions_revoked.connect
    async def forget_cached_states(app: Any, revoked: Any, **kwargs: Any) -> None:
        store.drop()  # another worker may change these entities now; the table holds the truth

    if settings.offline:
        offline = OfflineWriter(settings, topics, open_store(settings.offline_url, spec), metrics)

        @app.task
        async def write_offline() -> None:
            stop = asyncio.Event()
            try:
                await offline.run(stop)
            finally:
                stop.set()

    http = FastAPI(title=f"Loopline features — {spec.name}", version="1",
                   description="Online features per entity, the label join and the offline store.")
    http.include_router(build_router(app, metrics))
    app.serve(http)
    return app
