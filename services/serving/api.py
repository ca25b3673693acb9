"""HTTP routes of serving: predictions (one or a batch), the loaded versions, operations."""
from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any, Literal, NamedTuple

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from services.serving.domain import decision, in_canary, iso, log_key, prediction
from services.serving.models import Deployment, Loaded
from shared.errors import ScoringError, ValidationFailed
from shared.events import new_event_id
from shared.http import BodyTooLarge, Problem, Rejected, ops_router, read_body
from shared.kafka import OutRecord
from shared.scoring import Scored
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


class _Row(NamedTuple):
    """One event of a request, ready to score."""
    index: int
    fields: dict[str, Any]
    event_id: str
    entity: str | None
    features: dict[str, Any]
    state_time: float | None
    use: Loaded
    variant: str


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

    def prepare(index: int, raw: Any, now: datetime, deployment: Deployment) -> _Row:
        """One event: validated, its request-time features, the variant that serves it."""
        fields = validator.validate(raw)
        event_id = fields.pop("event_id", None) or new_event_id()
        validator.check_not_future({"occurred_at": fields[validator.time_field], "data": fields}, now=now,
                                   max_ahead=ctx.max_future)
        features, state_time = ctx.replica.features(fields, engine.event_time(fields))
        entity = engine.entity_of(fields)
        if deployment.challenger is not None and in_canary(entity, event_id, spec.serving.canary_share):
            return _Row(index, fields, event_id, entity, features, state_time, deployment.challenger, "challenger")
        return _Row(index, fields, event_id, entity, features, state_time, deployment.champion, "champion")

    def scores(loaded: Loaded, rows: list[_Row]) -> list[Scored]:
        """The rows' scores by one model, in one call; rows it cannot score are rejected one by one."""
        try:
            return loaded.scorer.score_many([(r.features, r.fields) for r in rows])
        except ScoringError:
            if len(rows) == 1:
                raise ValidationFailed([{"field": "", "code": "unscorable",
                                         "reason": "the model cannot score this event"}]) from None
        problems = []
        for r in rows:
            try:
                loaded.scorer.score_one(r.features, r.fields)
            except ScoringError as exc:
                problems.append({"index": r.index, "field": "", "code": "unscorable",
                                 "reason": f"the model cannot score this event: {exc}"})
        raise ValidationFailed(problems or [{"field": "", "code": "unscorable", "reason": "the model failed"}])

    def score(items: list[Any], started: float, records: list[OutRecord], forward: bool) -> list[dict[str, Any]]:
        """Validate every event, compute its features, score each model's rows in one call, log."""
        deployment = ctx.models.deployment
        if deployment.champion is None:
            raise Unavailable("no model is loaded yet")
        now = utcnow()
        rows, rejected = [], []
        for index, raw in enumerate(items):
            try:
                rows.append(prepare(index, raw, now, deployment))
            except ValidationFailed as exc:
                rejected += [{"index": index, **e} for e in exc.errors]
        if rejected:
            raise ValidationFailed(rejected)
        scored: list[Scored | None] = [None] * len(rows)
        for loaded in {id(r.use): r.use for r in rows}.values():
            mine = [i for i, r in enumerate(rows) if r.use is loaded]
            for i, one in zip(mine, scores(loaded, [rows[i] for i in mine])):
                scored[i] = one
        shadows = [(shadow, scores(shadow, rows)) for shadow in deployment.shadows]  # same inputs, never returned
        latency_ms = (time.perf_counter() - started) * 1000
        predicted_at = now.isoformat().replace("+00:00", "Z")
        topic, out = ctx.topics["predictions"], []
        for i, (r, one) in enumerate(zip(rows, scored)):
            assert one is not None
            occurred_at, state_at = r.fields[validator.time_field], iso(r.state_time)
            key = log_key(r.entity, r.event_id)
            prediction_id = new_event_id()
            vector = r.use.scorer.vector(r.features, r.fields)
            decided = decision(spec, one)
            logged = [(r.use, r.variant, one, decided, vector, prediction_id)] + [
                (shadow, "shadow", results[i], decision(spec, results[i]), shadow.scorer.vector(r.features, r.fields),
                 new_event_id()) for shadow, results in shadows]
            for loaded, variant, result, result_decided, vec, pid in logged:
                records.append(OutRecord(topic, key, dumps(prediction(
                    prediction_id=pid, event_id=r.event_id, occurred_at=occurred_at, predicted_at=predicted_at,
                    entity=r.entity, name=loaded.version.name, version=loaded.version.version, variant=variant,
                    scored=result, decided=result_decided, vector=vec, feature_hash=engine.feature_hash,
                    state_event_time=state_at, latency_ms=latency_ms))))
            if forward:
                record = validator.envelope(dict(r.fields), source="serving", ingested_at=now, event_id=r.event_id)
                records.append(OutRecord(ctx.topics["events"], validator.kafka_key(record), dumps(record)))
            out.append({"prediction_id": prediction_id, "event_id": r.event_id, "score": one.score,
                        "decision": decided, "proba": one.proba,
                        "model": {"name": r.use.version.name, "version": r.use.version.version},
                        "variant": r.variant, "features": vector,
                        "staleness": {"state_event_time": state_at, "replica_lag_records": ctx.replica.lag}})
        metrics.predictions.labels("champion").inc(sum(r.variant == "champion" for r in rows))
        metrics.predictions.labels("challenger").inc(sum(r.variant == "challenger" for r in rows))
        metrics.predictions.labels("shadow").inc(len(rows) * len(shadows))
        return out

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
            forward = s.forward_events or request.query_params.get("forward") == "true"
            try:
                out = score(items, started, records, forward)
            except ValidationFailed as exc:
                return _rejected(exc.errors)
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
