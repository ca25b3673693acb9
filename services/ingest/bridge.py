"""The direct-Kafka path: records producers write to events.raw / labels.raw are validated into
events / labels; invalid ones go to events.dlq unchanged, with the reason in headers.

At-least-once: a batch's offsets are committed only after every record it produced is acked.
A redelivered raw event keeps its id (derived from topic/partition/offset), so downstream dedups.
"""
from __future__ import annotations

import asyncio
import logging
from collections import Counter

from aiokafka import ConsumerRecord
from aiokafka.errors import CommitFailedError, KafkaError

from services.ingest.domain import check_raw
from services.ingest.metrics import IngestMetrics
from services.ingest.publisher import Publisher
from shared.errors import KafkaUnavailable
from shared.events import EventValidator
from shared.kafka import committed_lag, consume_batches, dead_letter, make_consumer
from shared.serialization import utcnow
from shared.settings import KafkaSettings
from shared.topics import Topics

log = logging.getLogger(__name__)
SERVICE = "ingest"


class RawBridge:
    def __init__(self, kafka: KafkaSettings, topics: Topics, validator: EventValidator,
                 publisher: Publisher, metrics: IngestMetrics):
        self.kafka, self.topics, self.validator = kafka, topics, validator
        self.publisher, self.metrics = publisher, metrics
        self.kinds = {topics["events.raw"]: "event", topics["labels.raw"]: "label"}
        self.targets = {"event": topics["events"], "label": topics["labels"]}
        self.running = False

    async def handle(self, records: list[ConsumerRecord]) -> None:
        """Validate a batch and produce it; retry (never skip) while Kafka is unavailable."""
        now = utcnow()
        outcomes = [check_raw(self.validator, r, self.kinds[r.topic], now) for r in records]  # type: ignore[arg-type]
        by_topic: dict[str, list] = {}
        for o in outcomes:
            if o.outgoing is not None:
                by_topic.setdefault(self.targets[o.kind], []).append((o.outgoing.key, o.outgoing.value, None))
            else:
                assert o.error is not None
                dlq = dead_letter(self.topics["events.dlq"], o.record, o.error, SERVICE, o.error.reason_code)
                by_topic.setdefault(dlq.topic, []).append((dlq.key, dlq.value, dlq.headers))
        delay = 0.2
        while True:
            try:
                await asyncio.gather(*(self.publisher.publish(t, recs) for t, recs in by_topic.items()))
                break
            except KafkaUnavailable as exc:
                self.metrics.produce_errors.labels("bridge").inc()
                log.warning("bridge produce failed; retrying the batch", extra={"error": str(exc)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        counts = Counter(("accepted", o.kind, "") if o.outgoing is not None
                         else ("rejected", o.kind, o.error.reason_code)  # type: ignore[union-attr]
                         for o in outcomes)
        for (what, kind, reason), n in counts.items():  # one label lookup per kind, not per record
            if what == "accepted":
                self.metrics.accepted.labels("kafka", kind).inc(n)
            else:
                self.metrics.rejected.labels("kafka", kind, reason).inc(n)

    async def run(self, group_id: str, stop: asyncio.Event) -> None:
        """Consume until `stop`; restart the consumer after broker errors, resuming from the last commit."""
        while not stop.is_set():
            consumer = make_consumer(self.kafka, *self.kinds, group_id=group_id)
            try:
                await consumer.start()
                self.running = True
                lag_task = asyncio.create_task(self._track_lag(consumer, stop))
                try:
                    await consume_batches(consumer, self.handle, stop=stop)
                finally:
                    lag_task.cancel()
            except CommitFailedError as exc:
                # A rebalance took the partitions away; their new owner re-reads the uncommitted batch.
                log.warning("commit failed after rebalance", extra={"error": str(exc)})
            except KafkaError as exc:
                log.warning("bridge consumer error; restarting", extra={"error": repr(exc)})
                await asyncio.sleep(1.0)
            finally:
                self.running = False
                await consumer.stop()

    async def _track_lag(self, consumer, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                self.metrics.bridge_lag.set(await committed_lag(consumer))
            except KafkaError:
                pass
            await asyncio.sleep(5.0)
