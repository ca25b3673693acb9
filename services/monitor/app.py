"""Wiring of the monitor: its stream app, the join table, background tasks and HTTP routes.

`create_app(settings, registry, registry_offsets, alerts)` builds everything (nothing happens at
import); `python -m services.monitor` reads the registry and the alerts' latest states from Kafka
first, then runs the app. One monitor runs per pipeline (see services.monitor.service)."""
from __future__ import annotations

import logging
from collections.abc import Iterable

from fastapi import FastAPI

from services.monitor.api import build_router
from services.monitor.config import MonitorSettings
from services.monitor.metrics import MonitorMetrics
from services.monitor.service import Monitor
from services.monitor.streams import MonitorStream
from shared.events import Alert
from shared.registry import Registry, follow_registry
from shared.spec import load_spec
from shared.stream import StreamApp
from shared.topics import Topics

log = logging.getLogger(__name__)
OUTPUTS = ("alerts", "events.dlq")
SOURCES = ("predictions", "training-examples", "features")


def create_app(settings: MonitorSettings | None = None, registry: Registry | None = None,
               registry_offsets: dict[int, int] | None = None, alerts: Iterable[Alert] = ()) -> StreamApp:
    settings = settings or MonitorSettings()
    spec = load_spec(settings.spec_path)
    topics = Topics(settings.topic_prefix)
    metrics = MonitorMetrics()
    registry = registry or Registry()
    monitor = Monitor(spec, settings, registry, metrics)
    monitor.book.restore(alerts)

    app = StreamApp("monitor", f"spec-{spec.name}", settings, metrics.registry)
    app.output_topics = [topics[name] for name in OUTPUTS]
    partitions = max(topics.spec_of(topics[name]).partitions for name in SOURCES)
    join = app.table("join", partitions)
    app.stream("monitor", [topics[name] for name in SOURCES], MonitorStream(monitor, topics, metrics), [join])

    @app.task
    async def follow() -> None:
        await follow_registry(settings.kafka, topics["models"], registry, registry_offsets or {})

    http = FastAPI(title=f"Loopline monitor — {spec.name}", version="1",
                   description="Drift, live performance, bias and skew of the served models; alerts and on-call "
                               "webhook subscriptions.")
    http.include_router(build_router(app, monitor, metrics))
    app.serve(http)
    # not `app.monitor`: faust.App.monitor is its sensor Monitor, which the worker starts (a Monitor of
    # ours there fails the start with AttributeError: no .beacon)
    app.drift_monitor = monitor  # for tests
    return app
