"""Prometheus helpers; each service declares its own metrics in its metrics.py."""
from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, disable_created_metrics, generate_latest,
)

# *_created series double every counter's output and no dashboard of ours reads them.
disable_created_metrics()

# Latency buckets from 0.5 ms to 10 s: fine where the hot paths live, coarse for stalls.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def render(registry: CollectorRegistry) -> tuple[bytes, str]:
    """Exposition body and content type for a /metrics endpoint."""
    return generate_latest(registry), CONTENT_TYPE_LATEST



@contextlib.contextmanager
def gc_pauses(histogram: Histogram) -> Iterator[None]:
    """While inside, observe every garbage-collector pause into `histogram` (labelled by generation):
    a full collection walks every tracked object and stops the event loop meanwhile, which shows up
    as latency tails."""
    children = [histogram.labels(str(g)) for g in range(3)]
    started = [0.0]

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            children[info["generation"]].observe(time.perf_counter() - started[0])

    gc.callbacks.append(callback)
    try:
        yield
    finally:
        gc.callbacks.remove(callback)


def freeze_heap() -> None:
    """Move everything alive now (imports, loaded models) out of the collector's reach, so full
    collections walk only what was allocated since: call once startup's long-lived objects exist."""
    gc.collect()
    gc.freeze()


def metric_samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of one metric in a Prometheus exposition text: (labels, value)."""
    from prometheus_client.parser import text_string_to_metric_families

    return [(sample.labels, sample.value) for family in text_string_to_metric_families(text)
            for sample in family.samples if sample.name == name]


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in a Prometheus exposition text (labels in any order), or None."""
    return next((value for have, value in metric_samples(text, name)
                 if all(have.get(k) == v for k, v in labels.items())), None)
