"""Offline store writer: events, snapshots and training examples from Kafka into Parquet.

Its own consumer group; offsets are committed only after the Parquet files covering them are
written (a crash rewrites a range, and readers drop repeated event ids).
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiokafka import ConsumerRecord
from aiokafka.errors import CommitFailedError, KafkaError

from services.features.config import FeaturesSettings
from services.features.metrics import FeaturesMetrics
from shared.kafka import make_consumer
from shared.offline import Dataset, OfflineStore, flatten
from shared.serialization import loads
from shared.topics import Topics

log = logging.getLogger(__name__)


class OfflineWriter:
    def __init__(self, settings: FeaturesSettings, topics: Topics, store: OfflineStore,
                 metrics: FeaturesMetrics):
        self.settings, self.store, self.metrics = settings, store, metrics
        self.datasets: dict[str, Dataset] = {topics["events"]: "events", topics["features"]: "snapshots",
                                             topics["training-examples"]: "training_examples"}
        self.group = topics.group("features", "offline")

    def write(self, records: list[ConsumerRecord]) -> None:
        """Write buffered records, one file per (dataset, partition, offset range, day)."""
        by_part: dict[tuple[str, int], list[ConsumerRecord]] = {}
        for r in records:
            by_part.setdefault((r.topic, r.partition), []).append(r)
        for (topic, partition), recs in by_part.items():
            dataset = self.datasets[topic]
            rows = [flatten(self.store.spec, dataset, loads(r.value)) for r in recs]  # type: ignore[attr-defined]
            part = f"p{partition}-{recs[0].offset:012d}-{recs[-1].offset:012d}"
            self.store.write(dataset, rows, part)
            self.metrics.offline_rows.labels(dataset).inc(len(rows))

    async def run(self, app: Any = None) -> None:
        """Consume and write until cancelled; restart the consumer after broker errors."""
        s = self.settings
        while True:
            consumer = make_consumer(s.kafka, *self.datasets, group_id=self.group)
            try:
                await consumer.start()
                buffer: list[ConsumerRecord] = []
                offsets: dict = {}
                started = time.monotonic()
                while True:
                    batches = await consumer.getmany(timeout_ms=500)
                    for tp, recs in batches.items():
                        buffer.extend(recs)
                        offsets[tp] = recs[-1].offset + 1
                    due = time.monotonic() - started >= s.offline_flush_s
                    if buffer and (len(buffer) >= s.offline_flush_rows or due):
                        await asyncio.to_thread(self.write, buffer)
                        await consumer.commit(offsets)
                        buffer, offsets = [], {}
                    if due or not buffer:
                        started = time.monotonic()
            except CommitFailedError as exc:
                log.warning("offline commit failed after a rebalance; the range is rewritten",
                            extra={"error": str(exc)})
            except KafkaError as exc:
                log.warning("offline writer consumer error; restarting", extra={"error": repr(exc)})
                await asyncio.sleep(1.0)
            finally:
                await consumer.stop()
