"""Wiring of the monitor: its stream app, the join table, background tasks and HTTP routes.

`create_app(settings, registry, registry_offsets, alerts)` builds everything (nothing happens at
import); `python -m services.monitor` reads the registry and the alerts' latest states from Kafka
first, then runs the app. One monitor runs per pipeline (see services.monitor.service). Besides the
analysis stream it runs the on-call webhook subscriptions (services.monitor.webhooks): the store
follows its compacted topic, the deliveries consume `alerts` in their own consumer group."""
from __future__ import annotations

import functools
import logging
from collections.abc import Iterable
from typing import Any

from fastapi import FastAPI

from services.monitor.api import build_router, subscriptions_router
from services.monitor.config import MonitorSettings
from services.monitor.metrics import MonitorMetrics
from services.monitor.service import Monitor
from services.monitor.streams import MonitorStream
from services.monitor.webhooks import (
    DeliveryPolicy, Dispatcher, SubscriptionStore, UrlGuard, Webhooks, follow_subscriptions, kafka_send,
    run_deliveries,
)
from shared.auth import ApiKeys
from shared.events import Alert
from shared.registry import Registry, follow_registry
from shared.spec import load_spec
from shared.stream import StreamApp
from shared.topics import Topics

log = logging.getLogger(__name__)
OUTPUTS = ("alerts", "events.dlq", "subscriptions", "alerts.deliveries.dlq")
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

    # ---- on-call webhook subscriptions
    store = SubscriptionStore(metrics)
    guard = UrlGuard(settings.webhook_allow)
    send = functools.partial(kafka_send, lambda: app.kafka_producer, timeout_s=settings.output_timeout_s)
    hooks = Webhooks(store, guard, send, topics["subscriptions"], settings.webhook_max_subscriptions)
    policy = DeliveryPolicy.from_settings(settings)

    def dispatcher() -> Dispatcher:
        return Dispatcher(store, guard, policy, send, topics["subscriptions"], topics["alerts.deliveries.dlq"],
                          metrics)

    @app.task
    async def follow_subs() -> None:
        await follow_subscriptions(settings.kafka, topics["subscriptions"], store)

    @app.task
    async def deliver() -> None:
        await run_deliveries(settings.kafka, topics["alerts"], topics.group("monitor", "deliveries"), store,
                             dispatcher, metrics, commit_interval_s=settings.commit_interval_s,
                             max_pending=settings.webhook_max_pending_alerts, state=hooks.deliveries)

    def readiness() -> dict[str, Any]:
        state = app.health()
        checks, problems = hooks.readiness()
        state["checks"] = {**state["checks"], **checks}
        state["problems"] = {**state.get("problems", {}), **problems}
        state["ready"] = state["ready"] and all(checks.values())
        state["deliveries"] = {"committed": hooks.deliveries.committed}
        return state

    http = FastAPI(title=f"Loopline monitor — {spec.name}", version="1",
                   description="Drift, live performance, bias and skew of the served models; alerts and on-call "
                               "webhook subscriptions.")
    http.include_router(build_router(app, monitor, metrics, readiness))
    http.include_router(subscriptions_router(hooks, ApiKeys(settings.api_keys), settings.output_timeout_s))
    app.serve(http)
    app.analysis = monitor  # for tests (app.monitor is faust's own sensor)
    app.webhooks = hooks
    return app
