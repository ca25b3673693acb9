"""HTTP routes of the ingest service."""
from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from services.ingest.domain import BadRequest, Checked, check_events, check_labels, decode_body
from shared.errors import KafkaUnavailable
from shared.metrics import render
from shared.serialization import utcnow


class RejectionOut(BaseModel):
    index: int = Field(description="Position of the record in the request (0 for a single object)")
    field: str = Field(description="Dotted path of the offending field ('' for the whole record)")
    reason: str
    code: str = Field(description="Stable reason code, e.g. missing, unknown_field, out_of_range")


class IngestResult(BaseModel):
    """202: all accepted; 207: some accepted, some rejected; 422: none accepted."""

    accepted: int
    event_ids: list[str] = Field(description="Ids of the accepted records, in request order")
    rejected: list[RejectionOut]


class Problem(BaseModel):
    detail: str


def _body_doc(schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"oneOf": [schema, {"type": "array", "items": schema}]}},
                "application/x-ndjson": {"schema": {"type": "string", "description": "one JSON object per line"}},
            },
        }
    }


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) more than `limit` bytes whether or not Content-Length is sent."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BadRequest(413, f"body of {declared} bytes exceeds the limit of {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadRequest(413, f"body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def build_router(ctx: Any) -> APIRouter:
    """Routes bound to one app's context (settings, validator, publisher, metrics)."""
    router = APIRouter()
    settings, metrics = ctx.settings, ctx.metrics

    async def ingest(request: Request, kind: str, check) -> Response:
        started = time.perf_counter()
        try:
            return await _ingest(request, kind, check)
        finally:
            metrics.request_seconds.labels(f"/v1/{kind}s").observe(time.perf_counter() - started)

    async def _ingest(request: Request, kind: str, check) -> Response:
        try:
            body = await read_body(request, settings.max_body_bytes)
            items = decode_body(body, request.headers.get("content-type", ""), settings.max_batch_events)
        except BadRequest as exc:
            metrics.rejected.labels("http", kind, "invalid_json" if exc.status == 400 else "invalid").inc()
            return JSONResponse({"detail": str(exc)}, status_code=exc.status)
        checked: Checked = check(ctx.validator, items, source="http", now=utcnow())
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
        413: {"model": Problem, "description": "Body or batch too large"},
        415: {"model": Problem, "description": "Unsupported content type"},
        422: {"model": IngestResult, "description": "No record valid; each rejection names index, field, reason"},
        503: {"model": Problem, "description": "Kafka unavailable; nothing accepted; see Retry-After"},
    }

    @router.post("/v1/events", status_code=202, responses=responses,
                 openapi_extra=_body_doc(ctx.validator.model.model_json_schema()),
                 summary="Send one event or a batch (JSON array or NDJSON)")
    async def post_events(request: Request) -> Response:
        return await ingest(request, "event", check_events)

    @router.post("/v1/labels", status_code=202, responses=responses,
                 openapi_extra=_body_doc(ctx.label_schema),
                 summary="Send outcomes for earlier events (one or a batch)")
    async def post_labels(request: Request) -> Response:
        return await ingest(request, "label", check_labels)

    @router.get("/healthz", summary="Process is alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz", summary="Kafka reachable and the raw bridge running")
    async def readyz() -> Response:
        checks = {"kafka": ctx.publisher.ready, "raw_bridge": ctx.bridge.running if ctx.bridge else True}
        ok = all(checks.values())
        return JSONResponse({"ready": ok, "checks": checks}, status_code=200 if ok else 503)

    @router.get("/metrics", summary="Prometheus metrics")
    async def metrics_endpoint() -> Response:
        body, content_type = render(metrics.registry)
        return Response(body, media_type=content_type)

    return router
