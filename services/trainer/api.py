"""HTTP routes of the trainer: the registry (read), retrain, promote and rollback (admin), operations."""
from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError

from services.trainer.metrics import TrainerMetrics
from services.trainer.service import Trainer
from shared.auth import ApiKeys
from shared.http import Problem, ops_router
from shared.stream import StreamApp


class StageChange(BaseModel):
    stage: Literal["challenger", "shadow", "archived"] = Field(
        description="challenger: serves the spec's canary share of entities; shadow: scores every request, "
                    "logged only; archived: neither")


async def stage_change(request: Request) -> StageChange:
    """The body of a stage change, read once the route's key is checked (a dependency declared after
    it): a client without the key gets 401/403 whatever it sends, and a body that is not JSON, or
    not UTF-8, is a 422 like any other invalid body (FastAPI's own body parsing answers 400 to it)."""
    try:
        return StageChange.model_validate_json(await request.body())
    except ValidationError as exc:
        # `input` of a body that is not JSON is the raw bytes: not text, not echoed
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"]), "input": None}
                                      if isinstance(e.get("input"), bytes) else {**e, "loc": ("body", *e["loc"])}
                                      for e in exc.errors(include_url=False)]) from None


STAGE_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": StageChange.model_json_schema()}}}}


class Refused(BaseModel):
    detail: str
    field: str = Field(description="The spec field that decides it")
    reason: str
    code: str = Field(description="no_batch_candidate | too_few_examples")


def refused(field: str, code: str, reason: str) -> JSONResponse:
    return JSONResponse({"detail": f"retrain refused: {reason}", "field": field, "reason": reason, "code": code},
                        status_code=409)


def build_router(app: StreamApp, trainer: Trainer, metrics: TrainerMetrics, keys: ApiKeys) -> APIRouter:
    router = APIRouter()
    admin = [Depends(keys.require("admin"))]
    missing = {404: {"model": Problem, "description": "No such version in the registry"}}
    conflict = {409: {"model": Problem, "description": "The registry's state does not allow it"}}

    def version_or_404(name: str, version: int) -> dict[str, Any]:
        found = trainer.registry.get(name, version)
        if found is None:
            raise HTTPException(404, f"{name} v{version} is not in the registry")
        return found.model_dump(mode="json")

    @router.get("/v1/models", summary="Every model version in the registry (name, version, stage, metrics)")
    async def models() -> dict[str, Any]:
        champion = trainer.registry.champion()
        return {"champion": None if champion is None else {"name": champion.name, "version": champion.version},
                "versions": [{"name": v.name, "version": v.version, "stage": v.stage, "library": v.library,
                              "algorithm": v.algorithm, "evaluation": v.evaluation, "metrics": v.metrics,
                              "trained_at": v.trained_at, "reason": v.reason} for v in trainer.registry.versions()]}

    @router.get("/v1/models/{name}/{version}", responses=missing,
                summary="One version with its metrics, lineage and reference statistics")
    async def model(name: str, version: int) -> dict[str, Any]:
        return version_or_404(name, version)

    @router.post("/v1/retrain", status_code=202, dependencies=admin, summary="Retrain the batch candidates now (admin)",
                 responses={**keys.responses, 409: {"model": Refused, "description": "Nothing to retrain: the spec has "
                            "no scikit-learn candidate, or the window holds fewer than training.min_examples"}})
    async def retrain() -> Any:
        held, needed = len(trainer.window), trainer.spec.training.min_examples
        if not trainer.batch:
            return refused("models", "no_batch_candidate", "the spec has no scikit-learn candidate to retrain")
        if held < needed:
            return refused("training.min_examples", "too_few_examples",
                           f"the training window holds {held} examples; the spec's training.min_examples is {needed}")
        trainer.request("request")
        return {"triggered": True, "window_examples": held}

    @router.post("/v1/models/{name}/{version}/promote", dependencies=admin,
                 responses={**missing, **keys.responses},
                 summary="Make this version the champion (admin)")
    async def promote(name: str, version: int) -> dict[str, Any]:
        version_or_404(name, version)
        await app.emit(trainer.promote(name, version))
        return version_or_404(name, version)

    @router.post("/v1/models/{name}/{version}/stage", dependencies=admin,
                 responses={**missing, **conflict, **keys.responses}, openapi_extra=STAGE_BODY,
                 summary="Put this version in stage challenger (canary), shadow or archived (admin)")
    async def stage(name: str, version: int, body: StageChange = Depends(stage_change)) -> dict[str, Any]:
        version_or_404(name, version)
        try:
            records = trainer.restage(name, version, body.stage)
        except ValueError as exc:
            raise HTTPException(409, str(exc)) from None
        await app.emit(records)
        return version_or_404(name, version)

    @router.post("/v1/rollback", dependencies=admin, responses={**conflict, **keys.responses},
                 summary="Make the previous champion the champion again (admin)")
    async def rollback() -> dict[str, Any]:
        try:
            records = trainer.rollback()
        except KeyError as exc:
            raise HTTPException(409, str(exc.args[0])) from None
        await app.emit(records)
        champion = trainer.registry.champion()
        return {"champion": None if champion is None else champion.model_dump(mode="json")}

    def readiness() -> dict[str, Any]:
        state = app.health()
        if trainer.last_retrain_error:
            state.setdefault("problems", {})["retrain"] = trainer.last_retrain_error
        return state

    router.include_router(ops_router(readiness, metrics.registry,
                                     "Registry loaded, offsets committing, lag known, output acknowledged"))
    return router
