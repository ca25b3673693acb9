"""The benchmark's data: the fraud example's events as the Event envelopes ingest writes, and
producing them."""
from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import datetime
from typing import Any

from bench.common import ROOT
from bench.features.per_event import MemoryKV, new_store, process
from examples.fraud.generate import GeneratorConfig, generate
from shared.events import EventValidator
from shared.features import FeatureEngine, parse_state_key
from shared.kafka import make_producer
from shared.serialization import dumps, utcnow
from shared.settings import KafkaSettings
from shared.spec import load_spec

SPEC_PATH = ROOT / "examples" / "fraud" / "pipeline.yaml"


class Data:
    """Validated `Event` envelopes of the fraud generator, as (key, value bytes), like ingest writes them."""

    def __init__(self, n: int, seed: int = 42, users: int = 1000):
        spec = load_spec(SPEC_PATH)
        self.validator, self.engine = EventValidator(spec), FeatureEngine(spec)
        self.raw = [e for e, _ in generate(GeneratorConfig(seed=seed, users=users, events=n))]
        now = utcnow()
        self.items: list[tuple[bytes, bytes]] = []
        for e in self.raw:
            record = self.validator.envelope(self.validator.validate(dict(e)), source="http", ingested_at=now)
            self.items.append((self.validator.kafka_key(record), dumps(record)))
        self.users = len({e["user_id"] for e in self.raw})

    def compute_only(self) -> dict[str, Any]:
        """The per-event work in this process, no Kafka: the ceiling of a one-process Python worker.

        Also counts the snapshots the stream must emit (late events are dead-lettered, not snapshotted)."""
        store, kv = new_store(self.engine), MemoryKV()
        statuses: Counter = Counter()
        now = time.time()
        t0 = time.perf_counter()
        for _, value in self.items:
            _, out = process(store, kv, 0, value, now)
            statuses[out.status] += 1
        secs = time.perf_counter() - t0
        per_entity: Counter = Counter()
        for key, value in kv.items():
            per_entity[parse_state_key(key)[0]] += len(value)
        sizes = list(per_entity.values())  # an entity's state: its head, chunk and seen records
        return {"events": len(self.items), "seconds": secs, "events_per_s": len(self.items) / secs,
                "statuses": dict(statuses), "snapshots": statuses["new"] + statuses["duplicate"],
                "state_bytes_mean": sum(sizes) / len(sizes), "state_bytes_max": max(sizes)}


def distinct_entity_items(validator: EventValidator, templates: list[dict], start: int, n: int,
                          now: datetime) -> list[tuple[bytes, bytes]]:
    """n events, each of its own entity (user_id m<i>), fields copied from generated templates."""
    out = []
    for i in range(start, start + n):
        e = dict(templates[i % len(templates)])
        e["user_id"], e["event_id"] = f"m{i:08d}", f"mem-{i}"
        record = validator.envelope(validator.validate(e), source="http", ingested_at=now)
        out.append((validator.kafka_key(record), dumps(record)))
    return out


async def produce(kafka: KafkaSettings, topic: str, items: list[tuple[bytes, bytes]], producer=None) -> float:
    """Send every (key, value); wait for all acks. Seconds taken."""
    own = producer is None
    if own:
        producer = make_producer(kafka, linger_ms=5)
        await producer.start()
    try:
        t0 = time.perf_counter()
        futures = [await producer.send(topic, value, key=key) for key, value in items]
        await asyncio.gather(*futures)
        return time.perf_counter() - t0
    finally:
        if own:
            await producer.stop()
