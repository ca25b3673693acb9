"""HTTP routes of the monitor: alerts and live statistics (read), operations."""
from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Query

from services.monitor.metrics import MonitorMetrics
from services.monitor.service import Monitor
from shared.http import ops_router
from shared.stream import StreamApp


def build_router(app: StreamApp, monitor: Monitor, metrics: MonitorMetrics) -> APIRouter:
    router = APIRouter()

    @router.get("/v1/alerts", summary="Alerts firing now (the latest record of each; resolved ones are on `alerts`)")
    async def alerts(kind: Literal["data_drift", "prediction_drift", "concept_drift", "performance", "bias", "skew"]
                     | None = Query(None)) -> dict[str, Any]:
        firing = [a.model_dump(mode="json") for a in monitor.book.firing.values() if kind is None or a.kind == kind]
        return {"firing": sorted(firing, key=lambda a: a["started_at"])}

    @router.get("/v1/performance", summary="Live metrics per model version and variant over the last labelled "
                                           "predictions (champion, challenger and shadow on the same traffic)")
    async def performance() -> dict[str, Any]:
        return {"window": monitor.spec.monitoring.performance_window, "primary": monitor.spec.metrics.primary,
                "versions": [{"model": name, "version": version, "variant": variant, "labelled": len(perf.rows),
                              "metrics": perf.values}
                             for (name, version, variant), perf in monitor.performance.items()]}

    router.include_router(ops_router(app.health, metrics.registry,
                                     "The streams are consuming and the alert state is restored"))
    return router
