"""Wiring of the monitor: its stream app, background tasks and HTTP routes.

`create_app(settings, registry, registry_offsets)` builds everything (nothing happens at import);
`python -m services.monitor` reads the registry from the `models` topic first, then runs the app.
This part wires the on-call webhook subscriptions (services.monitor.webhooks): the subscription
store follows its compacted topic, the deliveries consume `alerts` in their own consumer group.
"""
from __future__ import annotations

import functools
from typing import Any

from fastapi import FastAPI

from services.monitor.api import subscriptions_router
from services.monitor.config import MonitorSettings
from services.monitor.metrics import MonitorMetrics
from services.monitor.webhooks import (
    DeliveryPolicy, Dispatcher, SubscriptionStore, UrlGuard, Webhooks, follow_subscriptions, kafka_send,
    run_deliveries,
)
from shared.auth import ApiKeys
from shared.http import ops_router
from shared.registry import Registry
from shared.spec import load_spec
from shared.stream import StreamApp
from shared.topics import Topics

OUTPUTS = ("alerts", "subscriptions", "alerts.deliveries.dlq")


def create_app(settings: MonitorSettings | None = None, registry: Registry | None = None,
               registry_offsets: dict[int, int] | None = None) -> StreamApp:
    settings = settings or MonitorSettings()
    spec = load_spec(settings.spec_path)
    topics = Topics(settings.topic_prefix)
    metrics = MonitorMetrics()

    app = StreamApp("monitor", f"spec-{spec.name}", settings, metrics.registry)
    app.output_topics = [topics[name] for name in OUTPUTS]

    # Placeholder until the analysis streams are wired in: the runtime's consumer needs a subscription.
    app.stream("predictions", [topics["predictions"]], lambda batch, tables: [])

    store = SubscriptionStore(metrics)
    guard = UrlGuard(settings.webhook_allow)
    send = functools.partial(kafka_send, lambda: app.kafka_producer, timeout_s=settings.output_timeout_s)
    hooks = Webhooks(store, guard, send, topics["subscriptions"], settings.webhook_max_subscriptions)
    policy = DeliveryPolicy.from_settings(settings)

    def dispatcher() -> Dispatcher:
        return Dispatcher(store, guard, policy, send, topics["subscriptions"], topics["alerts.deliveries.dlq"],
                          metrics)

    @app.task
    async def follow() -> None:
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
                   description="Drift, performance, bias and skew monitoring; alerts; on-call webhook subscriptions.")
    http.include_router(subscriptions_router(hooks, ApiKeys(settings.api_keys), settings.output_timeout_s))
    http.include_router(ops_router(readiness, metrics.registry,
                                   "Subscriptions loaded, alert deliveries running, offsets committing, lag known"))
    app.serve(http)
    app.webhooks = hooks  # for tests
    return app
