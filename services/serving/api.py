"""HTTP routes of serving: predictions (one or a batch), the loaded versions, operations."""
from __future__ import annotations

import asyncio
import time
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from services.serving.domain import decision, in_canary, iso, log_key, prediction
from shared.errors import ValidationFailed
from shared.events import GLOBAL_KEY, new_event_id
from shared.http import BodyTooLarge, ops_router, read_body
from shared.kafka import OutRecord
from shared.serialization import dumps, loads, utcnow


class ModelRef(BaseModel):
    name: str
    version: int


class Staleness(BaseModel):
    state_event_time: str | None = Field(description="Newest event of the entity the feature state had applied")
    replica_lag_records: int = Field(description="Feature-state changelog records serving had not applied yet")


class PredictionOut(BaseModel):
    prediction_id: str
    event_id: str = Field(description="The scored event's id (the request's event_id, or a new one)")
    score: float = Field(description="Binary: P(positive); multiclass: the top class's probability; "
                                     "regression: the prediction")
    decision: bool | int | float | str = Field(description="Binary: score >= the spec's serving.threshold; "
                                                           "multiclass: the class; regression: the value")
    proba: dict[str, float] | None = Field(None, description="Multiclass: every class's probability")
    model: ModelRef
    variant: Literal["champion", "challenger"]
    staleness: Staleness
    features: dict[str, float | None] = Field(description="The exact model inputs used, by name")


class BatchOut(BaseModel):
    predictions: list[PredictionOut]


class Rejection(BaseModel):
    index: int
    field: str
    reason: str
    code: str


class Rejected(BaseModel):
    detail: str
    rejected: list[Rejection]


class Problem(BaseModel):
    detail: str


class Unavailable(Exception):
    def __init__(self, reason: str):
        self.reason = reason


def build_router(ctx: Any) -> APIRouter:
    router = APIRouter()
    s, spec, metrics = ctx.settings, ctx.spec, ctx.metrics
    validator, engine = ctx.validator, ctx.engine
    predict_scope = [Depends(ctx.keys.require("predict"))]
    event_schema = validator.model.model_json_schema()
    responses = {
        413: {"model": Problem, "description": "Body or batch too large"},
        415: {"model": Problem, "description": "Not application/json"},
        422: {"model": Rejected, "description": "An event is not valid: field, reason and code per problem"},
        503: {"model": Problem, "description": "No model loaded yet, state not caught up, overloaded or timed out; "
                                               "see Retry-After"},
        **ctx.keys.responses,
    }

    def unavailable(reason: str) -> Response:
        return JSONResponse({"detail": reason}, status_code=503, headers={"Retry-After": str(s.retry_after_s)})

    def score(raw: Any, started: float, records: list[OutRecord], forward: bool) -> dict[str, Any]:
        """One event: validate, request-time features, the variant's score, the log records."""
        fields = validator.validate(raw)
        event_id = fields.pop("event_id", None) or new_event_id()
        now = utcnow()
        validator.check_not_future({"occurred_at": fields[validator.time_field], "data": fields}, now=now,
                                   max_ahead=ctx.max_future)
        deployment = ctx.models.deployment
        if deployment.champion is None:
            raise Unavailable("no model is loaded yet")
        t = engine.event_time(fields)
        features, state_time = ctx.replica.features(fields, t)
        entity = engine.entity_of(fields)
        use, variant = deployment.champion, "champion"
        if deployment.challenger is not None and in_canary(entity, event_id, spec.serving.canary_share):
            use, variant = deployment.challenger, "challenger"
        scored = use.scorer.score_one(features, fields)
        decided = decision(spec, scored)
        vector = use.scorer.vector(features, fields)
        latency_ms = (time.perf_counter() - started) * 1000
        predicted_at = now.isoformat().replace("+00:00", "Z")
        occurred_at = fields[validator.time_field]
        prediction_id = new_event_id()
        topic, key = ctx.topics["predictions"], log_key(entity, event_id)
        records.append(OutRecord(topic, key, dumps(prediction(
            prediction_id=prediction_id, event_id=event_id, occurred_at=occurred_at, predicted_at=predicted_at,
            entity=entity, name=use.version.name, version=use.version.version, variant=variant, scored=scored,
            decided=decided, vector=vector, feature_hash=engine.feature_hash, state_time=state_time,
            latency_ms=latency_ms))))
        metrics.predictions.labels(variant).inc()
        for shadow in deployment.shadows:  # scored on the same inputs, logged, never returned
            shadow_scored = shadow.scorer.score_one(features, fields)
            records.append(OutRecord(topic, key, dumps(prediction(
                prediction_id=new_event_id(), event_id=event_id, occurred_at=occurred_at,
                predicted_at=predicted_at, entity=entity, name=shadow.version.name, version=shadow.version.version,
                variant="shadow", scored=shadow_scored, decided=decision(spec, shadow_scored),
                vector=shadow.scorer.vector(features, fields), feature_hash=engine.feature_hash,
                state_time=state_time, latency_ms=latency_ms))))
            metrics.predictions.labels("shadow").inc()
        if forward:
            record = validator.envelope(dict(fields), source="serving", ingested_at=now, event_id=event_id)
            records.append(OutRecord(ctx.topics["events"], validator.kafka_key(record), dumps(record)))
        return {"prediction_id": prediction_id, "event_id": event_id, "score": scored.score, "decision": decided,
                "proba": scored.proba, "model": {"name": use.version.name, "version": use.version.version},
                "variant": variant, "features": vector,
                "staleness": {"state_event_time": iso(state_time), "replica_lag_records": ctx.replica.lag}}

    async def handle(request: Request, route: str, many: bool) -> Response:
        started = time.perf_counter()
        status = 500
        try:
            response = await _handle(request, many, started)
            status = response.status_code
            return response
        finally:
            metrics.requests.labels(route, str(status)).inc()
            metrics.latency.labels(route).observe(time.perf_counter() - started)

    async def _handle(request: Request, many: bool, started: float) -> Response:
        if ctx.inflight >= s.max_concurrency:  # no queue: a full house says so at once
            return unavailable(f"more than {s.max_concurrency} requests in progress")
        if not ctx.ready():
            return unavailable(ctx.not_ready_reason())
        ctx.inflight += 1
        try:
            media = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
            if media not in ("application/json", ""):
                return JSONResponse({"detail": f"unsupported content type '{media}'; use application/json"},
                                    status_code=415)
            try:
                body = await read_body(request, s.max_body_bytes)
            except BodyTooLarge as exc:
                return JSONResponse({"detail": str(exc)}, status_code=413)
            try:
                data = loads(body)
            except ValueError as exc:
                return _rejected([{"index": 0, "field": "", "code": "invalid_json",
                                   "reason": f"body is not valid JSON (NaN and Infinity are not JSON): {exc}"}])
            items = data if many else [data]
            if many and not isinstance(data, list):
                return _rejected([{"index": 0, "field": "", "code": "not_an_array",
                                   "reason": "the batch route takes a JSON array of events"}])
            if len(items) > s.max_batch:
                return JSONResponse({"detail": f"batch has {len(items)} events; the limit is {s.max_batch}"},
                                    status_code=413)
            if not items:
                return _rejected([{"index": 0, "field": "", "code": "empty", "reason": "no events"}])
            records: list[OutRecord] = []
            out, rejected = [], []
            forward = s.forward_events or request.query_params.get("forward") == "true"
            for index, raw in enumerate(items):
                try:
                    out.append(score(raw, started, records, forward))
                except ValidationFailed as exc:
                    rejected += [{"index": index, **e} for e in exc.errors]
            if rejected:
                return _rejected(rejected)
            forwarded = [r for r in records if r.topic == ctx.topics["events"]]
            if forwarded:  # acknowledged by Kafka before the answer, as ingest does
                try:
                    await asyncio.wait_for(ctx.forward_events(forwarded), s.request_timeout_s)
                except Exception as exc:  # noqa: BLE001 - the client retries with the same event_id
                    return unavailable(f"the events could not be forwarded: {exc!r}; retry with the same event_id")
            for r in records:
                if r.topic != ctx.topics["events"]:
                    ctx.log.put(r)
            return Response(dumps({"predictions": out} if many else out[0]), media_type="application/json")
        except Unavailable as exc:
            return unavailable(exc.reason)
        finally:
            ctx.inflight -= 1

    def _rejected(rejected: list[dict[str, Any]]) -> Response:
        return JSONResponse({"detail": "invalid event", "rejected": rejected}, status_code=422)

    @router.post("/v1/predict", response_model=PredictionOut, responses=responses, dependencies=predict_scope,
                 openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                     "schema": event_schema}}}},
                 summary="Score one event (the fields ingest accepts; its entity's state gives the features)")
    async def predict(request: Request) -> Response:
        return await handle(request, "/v1/predict", many=False)

    @router.post("/v1/predict/batch", response_model=BatchOut, responses=responses, dependencies=predict_scope,
                 openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                     "schema": {"type": "array", "items": event_schema, "minItems": 1}}}}},
                 summary="Score many events; any invalid one makes the whole batch 422")
    async def predict_batch(request: Request) -> Response:
        return await handle(request, "/v1/predict/batch", many=True)

    @router.get("/v1/models", summary="The versions loaded (champion, challenger, shadows) and since when")
    async def models() -> dict[str, Any]:
        return ctx.models.describe()

    router.include_router(ops_router(ctx.readiness, metrics.registry,
                                     "A model loaded and warmed, the feature state caught up, the log draining"))
    return router
