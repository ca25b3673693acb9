"""HTTP routes of the monitor: alerts and live statistics (read), on-call webhook subscriptions
(admin), operations."""
from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any, Literal

from aiokafka.errors import KafkaError
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from services.monitor.metrics import MonitorMetrics
from services.monitor.service import Monitor
from services.monitor.webhooks import SubscriptionLimit, UrlRefused, Webhooks, secret_problem
from shared.auth import ApiKeys
from shared.events import AlertKind, Severity, Subscription, validation_errors
from shared.http import BodyTooLarge, Problem, Rejected, ops_router, read_body
from shared.serialization import loads, utcnow
from shared.spec import Name
from shared.stream import StreamApp

MAX_BODY_BYTES = 64 * 1024
Template = Literal["standard", "slack", "pagerduty"]


class SubscriptionBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(pattern=r"^https?://", max_length=2048,
                     description="Where alerts are POSTed. Hosts resolving to loopback, private, link-local or other "
                                 "non-public addresses are refused unless allow-listed (MONITOR_WEBHOOK_ALLOW). For "
                                 "PagerDuty, put the routing key in the fragment: …/v2/enqueue#routing_key=R0…")
    kinds: list[AlertKind] = Field(default_factory=list, max_length=16,
                                   description="Alert kinds to deliver; empty: all")
    severities: list[Severity] = Field(default_factory=list, max_length=8,
                                       description="Severities to deliver; empty: all")
    models: list[Name] = Field(default_factory=list, max_length=100, description="Model names to deliver; empty: all")
    template: Template = Field("standard", description="standard: {type, timestamp, data: the alert}; slack: a Slack "
                                                       "message; pagerduty: an Events v2 trigger/resolve")


class SubscriptionCreate(SubscriptionBase):
    secret: str | None = Field(None, max_length=200,
                               description="Standard Webhooks secret 'whsec_' + base64 of 24 to 64 bytes; "
                                           "omitted: one is generated and returned once")

    @field_validator("secret")
    @classmethod
    def _usable_secret(cls, value: str | None) -> str | None:
        if value is not None and (problem := secret_problem(value)):
            raise ValueError(problem)
        return value


class SubscriptionPublic(SubscriptionBase):
    id: str
    created_at: datetime
    disabled: bool = Field(description="True once a receiver answered 410 Gone: nothing is delivered any more")
    disabled_reason: str = ""


class SubscriptionCreated(SubscriptionPublic):
    secret: str = Field(description="The signing secret: shown in this answer only")


class SubscriptionList(BaseModel):
    subscriptions: list[SubscriptionPublic]


def public(sub: Subscription) -> dict[str, Any]:
    return sub.model_dump(mode="json", exclude={"secret"})


def subscriptions_router(hooks: Webhooks, keys: ApiKeys, produce_timeout_s: float = 10.0) -> APIRouter:
    """POST/GET/DELETE /v1/subscriptions, every route for admin keys only."""
    router = APIRouter(tags=["subscriptions"], dependencies=[Depends(keys.require("admin"))],
                       responses={401: {"model": Problem, "description": "No API key"},
                                  403: {"model": Problem, "description": "The key lacks the admin scope"}})

    def rejected(problems: list[dict[str, Any]]) -> Response:
        return JSONResponse({"detail": "invalid subscription", "rejected": problems}, status_code=422)

    def unavailable(reason: str) -> Response:
        return JSONResponse({"detail": reason}, status_code=503, headers={"Retry-After": "5"})

    @router.post("/v1/subscriptions", status_code=201, response_model=SubscriptionCreated,
                 summary="Subscribe a webhook to alerts (admin); the answer holds the signing secret, once",
                 openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                     "schema": SubscriptionCreate.model_json_schema()}}}},
                 responses={413: {"model": Problem, "description": "Body too large"},
                            409: {"model": Problem, "description": "Subscription limit reached"},
                            422: {"model": Rejected, "description": "Invalid body or refused URL: field, reason, code"},
                            503: {"model": Problem,
                                  "description": "Subscriptions not loaded yet or Kafka unavailable"}})
    async def create(request: Request) -> Response:
        try:
            raw = await read_body(request, MAX_BODY_BYTES)
        except BodyTooLarge as exc:
            return JSONResponse({"detail": str(exc)}, status_code=413)
        try:
            data = loads(raw)
        except ValueError as exc:
            return rejected([{"field": "", "reason": f"not JSON: {exc}", "code": "invalid_json"}])
        try:
            body = SubscriptionCreate.model_validate(data)
        except ValidationError as exc:
            return rejected(validation_errors(exc))
        if not hooks.store.loaded.is_set():
            return unavailable("the subscriptions are still being read")
        try:
            sub = await asyncio.wait_for(hooks.create(
                body.url, list(body.kinds), list(body.severities), list(body.models), body.template, body.secret,
                utcnow()), produce_timeout_s)
        except UrlRefused as exc:
            return rejected([{"field": "url", "reason": exc.reason, "code": exc.code}])
        except SubscriptionLimit as exc:
            return JSONResponse({"detail": str(exc)}, status_code=409)
        except (TimeoutError, KafkaError, OSError) as exc:
            return unavailable(f"the subscription could not be stored: {exc!r}")
        return JSONResponse({**public(sub), "secret": sub.secret}, status_code=201,
                            headers={"Location": f"/v1/subscriptions/{sub.id}"})

    @router.get("/v1/subscriptions", response_model=SubscriptionList,
                summary="Every subscription, without secrets (admin)")
    async def list_all() -> dict[str, Any]:
        return {"subscriptions": [public(s) for s in hooks.store.all()]}

    @router.get("/v1/subscriptions/{subscription_id}", response_model=SubscriptionPublic,
                responses={404: {"model": Problem, "description": "No such subscription"}},
                summary="One subscription, without its secret (admin)")
    async def get_one(subscription_id: str) -> Response:
        sub = hooks.store.get(subscription_id)
        if sub is None:
            return JSONResponse({"detail": f"no subscription {subscription_id}"}, status_code=404)
        return JSONResponse(public(sub))

    @router.delete("/v1/subscriptions/{subscription_id}", status_code=204,
                   responses={404: {"model": Problem, "description": "No such subscription"},
                              503: {"model": Problem, "description": "Kafka unavailable"}},
                   summary="Remove a subscription (admin): deliveries waiting for it are dropped")
    async def delete(subscription_id: str) -> Response:
        try:
            found = await asyncio.wait_for(hooks.delete(subscription_id), produce_timeout_s)
        except (TimeoutError, KafkaError, OSError) as exc:
            return unavailable(f"the subscription could not be removed: {exc!r}")
        if not found:
            return JSONResponse({"detail": f"no subscription {subscription_id}"}, status_code=404)
        return Response(status_code=204)

    return router


def build_router(app: StreamApp, monitor: Monitor, metrics: MonitorMetrics, readiness: Any) -> APIRouter:
    router = APIRouter()

    @router.get("/v1/alerts", summary="Alerts firing now (the latest record of each; resolved ones are on `alerts`)")
    async def alerts(kind: AlertKind | None = Query(None)) -> dict[str, Any]:
        firing = [a.model_dump(mode="json") for a in monitor.book.firing.values() if kind is None or a.kind == kind]
        return {"firing": sorted(firing, key=lambda a: a["started_at"])}

    @router.get("/v1/performance", summary="Live metrics per model version and variant over the last labelled "
                                           "predictions (champion, challenger and shadow on the same traffic)")
    async def performance() -> dict[str, Any]:
        return {"window": monitor.spec.monitoring.performance_window, "primary": monitor.spec.metrics.primary,
                "versions": [{"model": name, "version": version, "variant": variant, "labelled": len(perf.rows),
                              "metrics": perf.values}
                             for (name, version, variant), perf in monitor.performance.items()]}

    router.include_router(ops_router(readiness, metrics.registry, "The streams are consuming, subscriptions loaded, "
                                                                  "alert deliveries running"))
    return router
