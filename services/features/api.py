"""HTTP routes of the feature worker: the operational ones (it has no others yet)."""
from __future__ import annotations

from fastapi import APIRouter

from services.features.metrics import FeaturesMetrics
from shared.http import ops_router
from shared.stream import StreamApp


def build_router(app: StreamApp, metrics: FeaturesMetrics) -> APIRouter:
    return ops_router(app.health, metrics.registry,
                      "Tables recovered, offsets committing, lag known, output acknowledged")
