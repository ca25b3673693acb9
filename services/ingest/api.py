"""HTTP routes of the ingest service."""
from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from services.ingest.domain import BadRequest, Checked, Rejection, check_events, check_labels, decode_body
from shared.auth import ApiKeys
from shared.errors import KafkaUnavailable
from shared.http import BodyTooLarge, Problem, ops_router, read_body
from shared.serialization import utcnow


class RejectionOut(BaseModel):
    index: int = Field(description="Position of the record in the request (0 for a single object "
                                   "or for a body without records)")
    field: str = Field(description="Dotted path of the offending field ('' for the whole record)")
    reason: str
    code: str = Field(description="Stable reason code: missing, unknown_field, wrong_type, out_of_range, "
                                  "not_allowed_value, not_finite, too_long, too_short, bad_format, "
                                  "not_an_object, invalid_json, invalid, future (event time too far "
                                  "ahead of ingest's clock), too_large (record over the size limit), "
                                  "empty (the body holds no records)")


class IngestResult(BaseModel):
    """202: all accepted; 207: some accepted, some rejected; 422: none accepted."""

    accepted: int
    event_ids: list[str] = Field(description="Ids of the accepted records, in request order")
    rejected: list[RejectionOut]


def _event_schema(ctx: Any) -> dict[str, Any]:
    """The spec's event schema, with the rules JSON Schema cannot state written on the time field."""
    schema = ctx.validator.model.model_json_schema()
    time_field = schema["properties"][ctx.validator.time_field]
    time_field["description"] = (
        "Event time (RFC 3339; without an offset, UTC), within years 1-9999 once converted to UTC. At most "
        f"LOOPLINE_MAX_FUTURE_S ({ctx.limits.max_future.total_seconds():g} s here) ahead of ingest's clock, "
        "else code `future`")
    return schema


def _body_doc(schema: dict[str, Any], max_record_bytes: int) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "description": f"A record larger than {max_record_bytes} bytes on Kafka "
                           "(INGEST_MAX_RECORD_BYTES) is rejected with code `too_large`",
            "content": {
                "application/json": {"schema": {"oneOf": [
                    schema, {"type": "array", "items": schema, "minItems": 1}]}},
                "application/x-ndjson": {"schema": {
                    "type": "string",
                    "description": "one JSON object per line, each as in application/json"}},
            },
        }
    }


def build_router(ctx: Any) -> APIRouter:
    """Routes bound to one app's context (settings, validator, publisher, metrics)."""
    router = APIRouter()
    settings, metrics = ctx.settings, ctx.metrics
    keys = ApiKeys(settings.api_keys)
    write_scope = [Depends(keys.require("events:write"))]

    async def ingest(request: Request, kind: str, check) -> Response:
        started = time.perf_counter()
        try:
            return await _ingest(request, kind, check)
        finally:
            metrics.request_seconds.labels(f"/v1/{kind}s").observe(time.perf_counter() - started)

    async def _ingest(request: Request, kind: str, check) -> Response:
        try:
            try:
                body = await read_body(request, settings.max_body_bytes)
            except BodyTooLarge as exc:
                raise BadRequest(413, str(exc)) from None
            items = decode_body(body, request.headers.get("content-type", ""), settings.max_batch_events)
        except BadRequest as exc:
            code = {400: "invalid_json", 422: "empty"}.get(exc.status, "invalid")
            metrics.rejected.labels("http", kind, code).inc()
            if exc.status == 422:  # no records at all: the same shape as "no record valid"
                empty = Rejection(0, "", str(exc), code).public()
                return JSONResponse({"accepted": 0, "event_ids": [], "rejected": [empty]}, status_code=422)
            return JSONResponse({"detail": str(exc)}, status_code=exc.status)
        checked: Checked = check(ctx.validator, items, source="http", now=utcnow(), limits=ctx.limits)
        for r in checked.rejected:
            metrics.rejected.labels("http", kind, r.code).inc()
        if checked.accepted:
            topic = ctx.topics["events" if kind == "event" else "labels"]
            try:
                await ctx.publisher.publish(topic, [(o.key, o.value, None) for o in checked.accepted])
            except KafkaUnavailable as exc:
                metrics.produce_errors.labels("http").inc()
                return JSONResponse({"detail": f"{exc}; nothing was accepted, retry with the same event_id"},
                                    status_code=503, headers={"Retry-After": str(settings.retry_after_s)})
            metrics.accepted.labels("http", kind).inc(len(checked.accepted))
        status = 422 if not checked.accepted else (207 if checked.rejected else 202)
        result = {
            "accepted": len(checked.accepted),
            "event_ids": [o.event_id for o in checked.accepted],
            "rejected": [r.public() for r in checked.rejected],
        }
        return JSONResponse(result, status_code=status)

    responses = {
        202: {"model": IngestResult, "description": "All records acknowledged by Kafka"},
        207: {"model": IngestResult, "description": "Good records acknowledged, bad ones listed"},
        400: {"model": Problem, "description": "Body is not JSON"},
        413: {"model": Problem, "description": "Body over INGEST_MAX_BODY_BYTES or more records than "
                                                "INGEST_MAX_BATCH_EVENTS"},
        415: {"model": Problem, "description": "Unsupported content type"},
        422: {"model": IngestResult, "description": "No record valid, or none sent (`[]`, an empty body: "
                                                    "code `empty`); each rejection names index, field, "
                                                    "reason"},
        503: {"model": Problem, "description": "Kafka unavailable; nothing accepted; see Retry-After"},
    }

    @router.post("/v1/events", status_code=202, responses={**responses, **keys.responses}, dependencies=write_scope,
                 openapi_extra=_body_doc(_event_schema(ctx), settings.max_record_bytes),
                 summary="Send one event or a batch (JSON array or NDJSON)")
    async def post_events(request: Request) -> Response:
        return await ingest(request, "event", check_events)

    @router.post("/v1/labels", status_code=202, responses={**responses, **keys.responses}, dependencies=write_scope,
                 openapi_extra=_body_doc(ctx.validator.label_input_schema(), settings.max_record_bytes),
                 summary="Send outcomes for earlier events (one or a batch)")
    async def post_labels(request: Request) -> Response:
        return await ingest(request, "label", check_labels)

    def readiness() -> dict[str, Any]:
        problems = {}
        if not ctx.publisher.ready:
            problems["kafka"] = "the broker does not answer"
        if ctx.bridge is not None and (problem := ctx.bridge.problem()) is not None:
            problems["raw_bridge"] = problem
        checks = {"kafka": "kafka" not in problems, "raw_bridge": "raw_bridge" not in problems}
        return {"ready": not problems, "checks": checks, "problems": problems}

    router.include_router(ops_router(readiness, metrics.registry,
                                     "Kafka reachable and the raw bridge running and making progress"))
    return router
