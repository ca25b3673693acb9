"""The feature service's stream handlers: a batch of records in, the records to send out.

Entry points for Kafka as api.py is for HTTP: each decodes a record, hands it to the domain and
turns the outcome into output records, dead letters included (one bad record never stops a batch).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from types import SimpleNamespace

from services.features.config import FeaturesSettings
from services.features.domain import (
    JoinTable, LabelClock, LateEvent, Rejected, decode_event, decode_join_input, entity_key, process_event,
)
from services.features.metrics import FeaturesMetrics
from shared.features import FeatureStore
from shared.kafka import OutRecord, dead_letter
from shared.serialization import dumps, parse_time
from shared.stream import Batch, BatchTable, Output
from shared.topics import Topics

SERVICE = "features"
STATE, JOINS = "entity-state", "label-join"


@dataclass
class EventStream:
    """events → a snapshot per event on `features` and `snapshots.by-event` (table: entity state)."""

    store: FeatureStore
    settings: FeaturesSettings
    topics: Topics
    metrics: FeaturesMetrics

    def __call__(self, batch: Batch, tables: dict[str, BatchTable]) -> Output:
        t, metrics, settings = self.topics, self.metrics, self.settings
        out: list[OutRecord] = []
        ingested: list[str] = []
        now = time.time()
        self.store.new_batch()
        for tp, messages in batch.items():
            p = tp.partition
            view = tables[STATE].view(p)
            for msg in messages:
                try:
                    record = decode_event(msg.value)
                    res = process_event(self.store, view, p, record, now=now, max_future_s=settings.max_future_s,
                                        max_bytes=settings.max_snapshot_bytes)
                except Rejected as exc:  # this record only: dead-lettered with its reason, the worker goes on
                    metrics.events.labels(exc.code).inc()
                    out.append(dead_letter(t["events.dlq"], msg, exc, SERVICE, exc.code))
                    continue
                metrics.events.labels(res.status).inc()
                if res.status == "late":
                    metrics.late.inc()
                    out.append(dead_letter(t["events.dlq"], msg, LateEvent(res.reason), SERVICE, "late"))
                    continue
                out.append(OutRecord(t["features"], entity_key(record).encode(), res.snapshot))
                out.append(OutRecord(t["snapshots.by-event"], record["event_id"].encode(), res.snapshot))
                ingested.append(record["ingested_at"])

        def acknowledged() -> None:
            now = time.time()
            for at in ingested:
                metrics.snapshot_latency.observe(max(0.0, now - parse_time(at).timestamp()))
        return Output(out, acknowledged)


@dataclass
class JoinStream:
    """snapshots.by-event + labels → training examples (table: the label join)."""

    joined: JoinTable
    settings: FeaturesSettings
    topics: Topics
    metrics: FeaturesMetrics
    clock: LabelClock

    def __call__(self, batch: Batch, tables: dict[str, BatchTable]) -> list[OutRecord]:
        t, metrics = self.topics, self.metrics
        out: list[OutRecord] = []
        now = time.time()
        for tp, messages in batch.items():
            p = tp.partition
            view = tables[JOINS].view(p)
            kind = "label" if tp.topic == t["labels"] else "snapshot"
            for msg in messages:
                try:
                    record = decode_join_input(kind, msg.value, now=now, max_future_s=self.settings.max_future_s)
                except Rejected as exc:
                    (metrics.labels if kind == "label" else metrics.events).labels(exc.code).inc()
                    out.append(dead_letter(t["events.dlq"], msg, exc, SERVICE, exc.code))
                    continue
                if kind == "label":
                    self.clock.observe(p, parse_time(record["occurred_at"]).timestamp())
                res = self.joined.apply(view, msg.key, kind, record, [tp.topic, p, msg.offset], now)
                if kind == "label":
                    metrics.labels.labels(res.status).inc()
                if res.status in ("conflict", "late_label", "label_before_event"):
                    out.append(dead_letter(t["events.dlq"], msg, Rejected(res.status, res.reason), SERVICE,
                                           res.status))
                if res.example is not None:
                    out.append(OutRecord(t["training-examples"], entity_key(res.example).encode(), dumps(res.example)))
                    metrics.examples.inc()
            for gone in self.joined.sweep(view, self.clock.now(p), now):
                metrics.expired.labels(gone.kind).inc()
                if gone.record is not None:
                    source = SimpleNamespace(topic=gone.src[0], partition=gone.src[1], offset=gone.src[2],
                                             key=gone.key, value=dumps(gone.record), headers=None)
                    code = "unlabelled" if gone.kind == "snapshot" else "unmatched_label"
                    out.append(dead_letter(t["events.dlq"], source, Rejected(code, gone.reason), SERVICE, code))
        return out
