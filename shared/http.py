"""The operational HTTP routes every service serves: /healthz, /readyz, /metrics."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, ConfigDict, Field

from shared.errors import LooplineError
from shared.metrics import render


class Problem(BaseModel):
    """An error answer: what went wrong, in words."""

    detail: str


class Rejection(BaseModel):
    index: int | None = Field(None, description="Which record of a batch (absent for a single record)")
    field: str
    reason: str
    code: str


class Rejected(BaseModel):
    """A 422 answer: field, reason and code per problem."""

    detail: str
    rejected: list[Rejection]


class BodyTooLarge(LooplineError):
    """A request body over the limit (answer 413)."""


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than `limit` bytes (BodyTooLarge) whether or not
    Content-Length is sent: a client cannot make a service buffer an unbounded body."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"body of {declared} bytes exceeds the limit of {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class Readiness(BaseModel):
    """What /readyz answers (a service may add fields, e.g. lag)."""

    model_config = ConfigDict(extra="allow")

    ready: bool
    checks: dict[str, bool] = Field(description="Each readiness condition and whether it holds")
    problems: dict[str, str] = Field(default_factory=dict, description="Why a failing check fails")


def ops_router(readiness: Callable[[], dict[str, Any]], registry: CollectorRegistry, what: str) -> APIRouter:
    """Routes for liveness, readiness (`readiness()` returns a Readiness dict) and Prometheus metrics;
    `what` says in the OpenAPI summary what ready means for this service."""
    router = APIRouter(tags=["operations"])

    @router.get("/healthz", summary="Process is alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz", summary=what, responses={
        200: {"model": Readiness, "description": "Ready"},
        503: {"model": Readiness, "description": "Not ready; `checks` and `problems` say why"}})
    async def readyz() -> Response:
        state = readiness()
        return JSONResponse(state, status_code=200 if state["ready"] else 503)

    @router.get("/metrics", summary="Prometheus metrics (text exposition format)", response_class=Response,
                responses={200: {"description": "Prometheus text format",
                                 "content": {"text/plain": {"schema": {"type": "string"}}}}})
    async def metrics() -> Response:
        body, content_type = render(registry)
        return Response(body, media_type=content_type)

    return router
