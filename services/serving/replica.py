"""Serving's replica of the feature worker's entity state, fed from the worker's state changelog.

The feature worker's `entity-state` table is a compacted, catalogued changelog topic
(`<app id>.entity-state.changelog`, shared.topics "stream.changelog"): an entity's head record,
its sealed chunks and its "seen" records (shared.features.FeatureStore). Serving applies every
head and chunk record (the seen records, snapshots kept for duplicates, are not needed) to a local
RocksDB database, in log order, and asks the same `FeatureStore`/`FeatureEngine` code for request-time
features. The changelog is cut by batches the worker has fully output, and every prefix of it is a
consistent state (see FeatureStore), so the replica is consistent at every record.

The positions reached are stored in the same database, so a restart resumes; the replica counts
as caught up once it has reached the end offsets the changelog had when serving started.
"""
from __future__ import annotations

import asyncio
import logging
import struct
from pathlib import Path
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError
from rocksdict import Options, Rdict, WriteBatch

from services.serving.metrics import ServingMetrics
from shared.events import GLOBAL_KEY
from shared.features import HEAD, SEEN, FeatureEngine, FeatureStore, parse_state_key
from shared.kafka import ensure_topics, make_consumer, partitions_of
from shared.settings import KafkaSettings
from shared.topics import Topics

log = logging.getLogger(__name__)
_POSITION = b"\xff\xffposition:"  # + partition: the next changelog offset to apply (never an entity key)
_OFFSET = struct.Struct(">q")


class ReplicaKV:
    """The replica database as the key-value store FeatureStore reads."""

    def __init__(self, db: Rdict):
        self.db = db

    def get(self, key: bytes) -> bytes | None:
        return self.db.get(key)

    def set(self, key: bytes, value: bytes) -> None:  # pragma: no cover - serving never writes state
        raise RuntimeError("the replica is read-only for serving")

    delete = set


class StateReplica:
    def __init__(self, kafka: KafkaSettings, topics: Topics, engine: FeatureEngine, data_dir: Path,
                 metrics: ServingMetrics, *, cache_events: int, cache_entities: int):
        self.kafka, self.topics, self.engine, self.metrics = kafka, topics, engine, metrics
        # the feature worker's table of these feature definitions (its app id carries their hash)
        self.topic = topics.changelog(topics.group("features", f"defs-{engine.feature_hash}"), "entity-state")
        data_dir.mkdir(parents=True, exist_ok=True)
        options = Options()
        options.set_write_buffer_size(8 << 20)
        options.set_max_write_buffer_number(2)
        self.db = Rdict(str(data_dir / f"replica-{engine.feature_hash}"), options)
        self.kv = ReplicaKV(self.db)
        self.store = FeatureStore(engine, cache_events=cache_events, cache_entities=cache_entities)
        self.positions: dict[int, int] = {}
        self.targets: dict[int, int] | None = None  # end offsets at start: caught up once reached
        self.caught_up = False
        self.lag = -1

    def features(self, fields: dict[str, Any], t: float) -> tuple[dict[str, Any], float | None]:
        """Request-time features of an event (its fields, its time), and the newest event time the
        entity's state holds (None: no state yet)."""
        entity = (self.engine.entity_of(fields) or GLOBAL_KEY).encode()
        state = self.store.state(self.kv, 0, entity)
        newest = state.max_t if len(state) else None
        return self.engine.snapshot(state, t, fields), newest

    async def run(self) -> None:
        """Apply the changelog forever (cancel to stop)."""
        partitions = self.topics.spec_of(self.topics["events"]).partitions
        await ensure_topics(self.kafka, self.topics, [self.topic], partitions={self.topic: partitions})
        # applied on the event loop (reads and writes never interleave), a fetch at a time: bounded
        consumer = make_consumer(self.kafka, group_id=None, max_poll_records=2000)
        await consumer.start()
        try:
            parts = [TopicPartition(self.topic, p) for p in sorted(await partitions_of(consumer, self.topic))]
            consumer.assign(parts)
            for tp in parts:
                stored = self.db.get(_POSITION + str(tp.partition).encode())
                self.positions[tp.partition] = _OFFSET.unpack(stored)[0] if stored else 0
                consumer.seek(tp, self.positions[tp.partition])
            ends = await consumer.end_offsets(parts)
            self.targets = {tp.partition: ends[tp] for tp in parts}
            self._check_caught_up()
            asyncio.ensure_future(self._sample_lag(consumer, parts))
            while True:
                batch = await consumer.getmany(timeout_ms=200)
                if batch:
                    self._apply(batch)
                    self._check_caught_up()
        finally:
            await consumer.stop()

    def _apply(self, batch: dict[TopicPartition, list[Any]]) -> None:
        """Write a fetch's records and the new positions in one RocksDB write batch; forget the
        decoded states of the entities whose head changed."""
        wb = WriteBatch()
        changed: set[bytes] = set()
        n = 0
        for tp, records in batch.items():
            for r in records:
                entity, kind = parse_state_key(r.key)
                if kind == SEEN:
                    continue
                if r.value is None:
                    wb.delete(r.key)
                else:
                    wb.put(r.key, r.value)
                if kind == HEAD:
                    changed.add(entity)
                n += 1
            self.positions[tp.partition] = records[-1].offset + 1
            wb.put(_POSITION + str(tp.partition).encode(), _OFFSET.pack(self.positions[tp.partition]))
        self.db.write(wb)
        for entity in changed:
            self.store.forget(0, entity)
        self.metrics.replica_applied.inc(n)

    def _check_caught_up(self) -> None:
        if not self.caught_up and self.targets is not None and all(
                self.positions.get(p, 0) >= end for p, end in self.targets.items()):
            self.caught_up = True
            log.info("feature state replica caught up", extra={"positions": self.positions})

    async def _sample_lag(self, consumer: Any, parts: list[TopicPartition]) -> None:
        while True:
            try:
                ends = await consumer.end_offsets(parts)
                self.lag = sum(max(0, ends[tp] - self.positions.get(tp.partition, 0)) for tp in parts)
                self.metrics.replica_lag.set(self.lag)
            except KafkaError as exc:
                log.warning("cannot read the replica's lag", extra={"error": repr(exc)})
            await asyncio.sleep(1.0)

    def close(self) -> None:
        self.db.close()
