"""The ingest service's link to Kafka: one idempotent producer, a health probe, bounded waits."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from shared.errors import KafkaUnavailable
from shared.kafka import Headers, OutRecord, kafka_reachable, make_producer, send_batched
from shared.settings import KafkaSettings

log = logging.getLogger(__name__)


class Publisher:
    """Sends batches and returns only once the broker acknowledged all of them (acks=all)."""

    BATCH_API_MIN = 32  # records per publish() from which the batch API is used

    def __init__(self, kafka: KafkaSettings, produce_timeout_s: float):
        self.kafka = kafka
        self.timeout = produce_timeout_s
        self.producer: AIOKafkaProducer | None = None
        self.reachable = False

    @property
    def ready(self) -> bool:
        return self.producer is not None and self.reachable

    async def connect(self, stop: asyncio.Event) -> None:
        """Start the producer, retrying until the broker answers (the service stays up, not ready)."""
        delay = 0.5
        while not stop.is_set():
            producer = make_producer(self.kafka)
            try:
                await producer.start()
            except (KafkaError, OSError) as exc:
                await producer.stop()
                log.warning("kafka not reachable, retrying", extra={"error": repr(exc), "in_s": delay})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self.producer, self.reachable = producer, True
            return

    async def probe(self) -> bool:
        """Refresh `reachable` with a metadata round trip."""
        self.reachable = self.producer is not None and await kafka_reachable(self.producer)
        return self.reachable

    async def publish(self, topic: str, records: Sequence[tuple[bytes, bytes, Headers | None]]) -> None:
        """Produce all records and wait for every ack; raise KafkaUnavailable if that fails or times out.

        On a timeout some records may still land later; clients re-send with the same event_id
        and downstream dedups, so nothing is counted twice.
        """
        if not self.ready:
            raise KafkaUnavailable("Kafka is not reachable")
        assert self.producer is not None
        try:
            futures = await asyncio.wait_for(self._send_all(topic, records), self.timeout)
            # asyncio.wait (not wait_for on gather) so a timeout leaves the producer's futures alone.
            done, pending = await asyncio.wait(futures, timeout=self.timeout)
        except (KafkaError, asyncio.TimeoutError) as exc:
            raise KafkaUnavailable(f"Kafka did not accept the records: {exc!r}") from None
        if pending:
            raise KafkaUnavailable(f"Kafka did not acknowledge within {self.timeout}s")
        failed = next((f.exception() for f in done if f.exception() is not None), None)
        if failed is not None:
            raise KafkaUnavailable(f"Kafka rejected the records: {failed!r}")

    async def _send_all(self, topic: str, records: Sequence[tuple[bytes, bytes, Headers | None]]) -> list:
        """One record batch per partition (split when full) through the producer's batch API:
        a few futures instead of one per record, and no per-record send() overhead."""
        assert self.producer is not None
        producer = self.producer
        if len(records) < self.BATCH_API_MIN:
            # A few records (single-event requests): send() lets concurrent requests share the
            # producer's open batches (linger), so the broker sees fewer, larger produce requests.
            send = producer.send
            return [await send(topic, value=value, key=key, headers=headers) for key, value, headers in records]
        return await send_batched(producer, (OutRecord(topic, key, value, headers) for key, value, headers in records))

    async def stop(self) -> None:
        if self.producer is not None:
            await self.producer.stop()
            self.producer = None
