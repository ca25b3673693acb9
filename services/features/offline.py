"""Offline store writer: events, snapshots and training examples from Kafka into Parquet.

Its own consumer group; offsets are committed only after the Parquet files covering them are
written (a crash rewrites a range, and readers drop repeated event ids).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition

from services.features.config import FeaturesSettings
from services.features.metrics import FeaturesMetrics
from shared.kafka import run_consumer
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

    async def run(self, stop: asyncio.Event) -> None:
        """Consume and write until `stop`; commit only what the Parquet files written cover."""
        s = self.settings
        buffer: list[ConsumerRecord] = []
        offsets: dict[TopicPartition, int] = {}
        started = time.monotonic()

        async def handle(records: list[ConsumerRecord]) -> dict[TopicPartition, int]:
            nonlocal buffer, offsets, started
            for r in records:
                buffer.append(r)
                offsets[TopicPartition(r.topic, r.partition)] = r.offset + 1
            due = time.monotonic() - started >= s.offline_flush_s
            if not buffer or not (len(buffer) >= s.offline_flush_rows or due):
                if not buffer:
                    started = time.monotonic()
                return {}
            await asyncio.to_thread(self.write, buffer)
            done, buffer, offsets, started = offsets, [], {}, time.monotonic()
            return done

        @contextlib.asynccontextmanager
        async def fresh(_: Any) -> AsyncIterator[None]:
            nonlocal buffer, offsets
            buffer, offsets = [], {}  # after a restart the uncommitted range is read (and written) again
            yield

        await run_consumer(s.kafka, list(self.datasets), self.group, handle, stop=stop, name="offline writer",
                           session=fresh)
