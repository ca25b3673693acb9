"""Prometheus helpers; each service declares its own metrics in its metrics.py."""
from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, disable_created_metrics, generate_latest

# *_created series double every counter's output and no dashboard of ours reads them.
disable_created_metrics()

# Latency buckets from 0.5 ms to 10 s: fine where the hot paths live, coarse for stalls.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def render(registry: CollectorRegistry) -> tuple[bytes, str]:
    """Exposition body and content type for a /metrics endpoint."""
    return generate_latest(registry), CONTENT_TYPE_LATEST
