"""Test helpers: topic readers here; the broker, service processes and wait_until live in deploy/procs.py
(shared with the benchmarks and the local demo) and are re-exported for the tests."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path

import pandas as pd
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.structs import RecordMetadata

from deploy.free_ports import free_port  # noqa: F401  (re-exported for the tests)
from deploy.procs import ROOT, Broker, ServiceProcess, wait_until  # noqa: F401  (likewise)
from shared.kafka import make_consumer, make_producer, partitions_of
from shared.metrics import metric_value  # noqa: F401  (re-exported for the tests)
from shared.settings import KafkaSettings


async def read_topic(kafka: KafkaSettings, topic: str, *, expect: int | None = None,
                     until: Callable[[list[ConsumerRecord]], bool] | None = None,
                     idle_s: float = 3.0, timeout_s: float = 60.0) -> list[ConsumerRecord]:
    """Every record of a topic from the beginning (no consumer group): until `expect` records are
    read, or `until(records)` holds, or, without either, until nothing new arrived for `idle_s`."""
    consumer = make_consumer(kafka, group_id=None)
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in sorted(await partitions_of(consumer, topic))]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        out: list[ConsumerRecord] = []
        deadline = time.monotonic() + timeout_s
        last_new = time.monotonic()
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for recs in batch.values():
                out.extend(recs)
            if batch:
                last_new = time.monotonic()
            if expect is not None and len(out) >= expect:
                break
            if until is not None:
                if batch and until(out):
                    break
            elif expect is None and time.monotonic() - last_new > idle_s:
                break
        return out
    finally:
        await consumer.stop()
async def produce(kafka: KafkaSettings, topic: str,
                  items: Iterable[tuple[bytes | None, bytes | None]]) -> list[RecordMetadata]:
    """Write (key, value) records to a topic in order; their metadata once all in-sync replicas have them."""
    producer = make_producer(kafka, linger_ms=5, max_request_size=2 << 20)
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key) for key, value in items]
        return [await f for f in futures]
    finally:
        await producer.stop()





SERVICES = ("ingest", "features", "trainer", "serving", "monitor")
_SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
             "summary": ("_sum", "_count", "_created"), "gauge": ("",)}


def exported_metrics() -> dict[str, set[str]]:
    """Every sample name the services export, with the label names of its metric: each service's
    metrics class instantiated, plus the stream runtime's lag and progress gauges for the services
    that run on it (what the Prometheus rules and the dashboard may name)."""
    import importlib

    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics import MetricWrapperBase

    from shared.stream import StreamApp, StreamSettings

    out: dict[str, set[str]] = {}
    for service in SERVICES:
        module = importlib.import_module(f"services.{service}.metrics")
        classes = [v for k, v in vars(module).items() if k.endswith("Metrics") and isinstance(v, type)
                   and v.__module__ == module.__name__]
        assert classes, f"services/{service}/metrics.py: no metrics class"
        for cls in classes:
            for metric in vars(cls()).values():
                if isinstance(metric, MetricWrapperBase):
                    for suffix in _SUFFIXES[metric._type]:  # noqa: SLF001
                        out[metric._name + suffix] = set(metric._labelnames)  # noqa: SLF001
        if "StreamApp(" in (ROOT / "services" / service / "app.py").read_text():
            registry = CollectorRegistry()
            StreamApp(service, "metrics-check", StreamSettings(), registry)
            for family in registry.collect():
                if family.name.startswith(f"loopline_{service}_"):
                    out[family.name] = set()
    return out
def fraud_offline_store(root: Path, n: int = 1500, drift_at: int | None = 750) -> pd.DataFrame:
    """An offline store of n fraud training examples (the generator's events through the real feature
    engine, a drift at `drift_at`), written by the store's writer as the feature worker's offline writer
    writes it (two parts, a row repeated in both); returns what a reader gets back."""
    from examples.fraud.training import fraud_spec, fraud_training_examples
    from shared.offline import LocalParquetStore, flatten

    spec = fraud_spec()
    store = LocalParquetStore(root, spec)
    rows = [flatten(spec, "training_examples", e) for e in fraud_training_examples(n, drift_at=drift_at)]
    half = len(rows) // 2
    store.write("training_examples", rows[:half + 1], "p0-000000000000-000000000100")
    store.write("training_examples", rows[half:], "p1-000000000000-000000000100")
    return store.read("training_examples")
