"""The direct-Kafka path: records producers write to events.raw / labels.raw are validated into
events / labels; invalid ones go to events.dlq with the reason in headers (values over
shared.kafka.DLQ_MAX_VALUE_BYTES cut, with a header saying so), so no record can stop the bridge.

At-least-once: a batch's offsets are committed only after every record it produced is acked.
A redelivered raw event keeps its id (derived from topic/partition/offset), so downstream dedups.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord
from aiokafka.errors import KafkaError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential

from services.ingest.domain import DEFAULT_LIMITS, Limits, check_raw_batch
from services.ingest.metrics import IngestMetrics
from services.ingest.publisher import Publisher
from shared.errors import KafkaUnavailable
from shared.events import EventValidator
from shared.kafka import ConsumerStopped, dead_letter, lags, run_consumer
from shared.serialization import utcnow
from shared.settings import KafkaSettings
from shared.topics import Topics

log = logging.getLogger(__name__)
SERVICE = "ingest"
# After SIGTERM, a produce already in flight gets this long to be acknowledged before it is abandoned
# (its batch stays uncommitted and is read again after the restart).
STOP_GRACE_S = 1.0


@dataclass
class BridgeHealth:
    """What /readyz needs to tell a bridge that works from one that cannot make progress."""

    stall_after_s: float
    last_progress: float = 0.0  # monotonic time of the last batch done (or of the start)
    batch_since: float | None = None  # a batch is in hand since then
    failing_since: float | None = None  # producing the batch in hand has failed since then
    last_error: str = ""
    behind: int = 0  # records on the raw topics not yet fetched (last sample)
    behind_since: float | None = None  # `behind` > 0 in every sample since then

    def problem(self, now: float | None = None) -> str | None:
        """None while the bridge keeps up; else why it does not."""
        now = time.monotonic() if now is None else now
        limit = self.stall_after_s
        if self.failing_since is not None and now - self.failing_since >= limit:
            return f"producing to Kafka has failed for {now - self.failing_since:.0f} s: {self.last_error}"
        if self.batch_since is not None and now - self.batch_since >= limit:
            return f"one batch has been in progress for {now - self.batch_since:.0f} s"
        if self.behind_since is not None:
            idle = now - max(self.behind_since, self.last_progress)
            if idle >= limit:
                return f"{self.behind} raw records waiting and none processed for {idle:.0f} s"
        return None

    def sampled(self, behind: int, now: float) -> None:
        self.behind = behind
        if behind == 0:
            self.behind_since = None
        elif self.behind_since is None:
            self.behind_since = now


class RawBridge:
    def __init__(self, kafka: KafkaSettings, topics: Topics, validator: EventValidator,
                 publisher: Publisher, metrics: IngestMetrics, limits: Limits = DEFAULT_LIMITS,
                 *, stall_after_s: float = 60.0):
        self.kafka, self.topics, self.validator = kafka, topics, validator
        self.publisher, self.metrics, self.limits = publisher, metrics, limits
        self.kinds = {topics["events.raw"]: "event", topics["labels.raw"]: "label"}
        self.targets = {"event": topics["events"], "label": topics["labels"]}
        self.running = False
        self.health = BridgeHealth(stall_after_s)
        self._stop = asyncio.Event()

    def problem(self) -> str | None:
        """Why the bridge is not ready (for /readyz), or None."""
        if not self.running:
            return "the raw bridge's consumer is not running"
        return self.health.problem()

    async def handle(self, records: list[ConsumerRecord]) -> None:
        """Validate a batch and produce it; retry (never skip) while Kafka is unavailable.

        Raises ConsumerStopped if asked to stop before the batch is acknowledged (it stays uncommitted)."""
        if not records:
            return
        checked = check_raw_batch(self.validator, records, self.kinds, utcnow(), self.limits)
        by_topic: dict[str, list] = {}
        for kind, accepted in checked.accepted.items():
            if accepted:
                by_topic[self.targets[kind]] = [(key, value, None) for key, value in accepted]
        for o in checked.rejected:
            assert o.error is not None
            dlq = dead_letter(self.topics["events.dlq"], o.record, o.error, SERVICE, o.error.reason_code)
            by_topic.setdefault(dlq.topic, []).append((dlq.key, dlq.value, dlq.headers))
        self.health.batch_since = time.monotonic()
        try:
            await self._publish(by_topic)
        finally:
            self.health.batch_since = self.health.failing_since = None
        self.health.last_progress = time.monotonic()
        for kind, accepted in checked.accepted.items():
            if accepted:
                self.metrics.accepted.labels("kafka", kind).inc(len(accepted))
        for (kind, reason), n in Counter((o.kind, o.error.reason_code) for o in checked.rejected).items():  # type: ignore[union-attr]
            self.metrics.rejected.labels("kafka", kind, reason).inc(n)

    async def _publish(self, by_topic: dict[str, list]) -> None:
        """Produce every topic's records and wait for the acks; back off 0.2 s doubling to 5 s between
        attempts while Kafka is unavailable; stop waiting as soon as the bridge is asked to stop."""
        retrying = AsyncRetrying(retry=retry_if_exception_type(KafkaUnavailable),
                                 wait=wait_exponential(multiplier=0.2, max=5.0),
                                 sleep=self._sleep_unless_stopped, before_sleep=self._produce_failed,
                                 reraise=True)
        async for attempt in retrying:
            with attempt:
                if self._stop.is_set():
                    raise ConsumerStopped
                await self._unless_stopped(
                    asyncio.gather(*(self.publisher.publish(t, recs) for t, recs in by_topic.items())))

    def _produce_failed(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        self.metrics.produce_errors.labels("bridge").inc()
        if self.health.failing_since is None:
            self.health.failing_since = time.monotonic()
        self.health.last_error = str(exc)
        log.warning("bridge produce failed; retrying the batch",
                    extra={"error": str(exc), "attempt": state.attempt_number})

    async def _sleep_unless_stopped(self, seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def _unless_stopped(self, aw: Awaitable[Any]) -> Any:
        """Await `aw`; if stop is set first, give it STOP_GRACE_S, then cancel it and raise ConsumerStopped."""
        task = asyncio.ensure_future(aw)
        stopping = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                await asyncio.wait({task}, timeout=STOP_GRACE_S)
            if not task.done():
                raise ConsumerStopped
            return task.result()
        finally:
            stopping.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, KafkaUnavailable):
                    await task

    async def run(self, group_id: str, stop: asyncio.Event) -> None:
        """Consume until `stop`; restart the consumer after broker errors, resuming from the last commit."""
        self._stop = stop
        await run_consumer(self.kafka, list(self.kinds), group_id, self.handle, stop=stop, name="raw bridge",
                           session=self._session)

    @contextlib.asynccontextmanager
    async def _session(self, consumer: AIOKafkaConsumer) -> AsyncIterator[None]:
        """While a consumer runs: the bridge counts as running, and its lag is sampled."""
        self.running = True
        self.health.last_progress = time.monotonic()
        watch = asyncio.create_task(self._watch(consumer, self._stop))
        try:
            yield
        finally:
            self.running = False
            watch.cancel()

    async def _watch(self, consumer: AIOKafkaConsumer, stop: asyncio.Event) -> None:
        """Sample lag: committed (the metric) and not yet fetched (for the readiness check). The second
        ignores what is fetched but in hand (the batch checks cover that) and stays 0 on an idle bridge
        even when transaction markers keep the committed offset one short of the end."""
        interval = min(5.0, self.health.stall_after_s / 4)
        while not stop.is_set():
            try:
                committed, behind = await asyncio.wait_for(
                    asyncio.gather(lags(consumer), lags(consumer, fetched=True)), timeout=max(interval, 2.0))
                self.metrics.bridge_lag.set(committed)
                self.health.sampled(behind, time.monotonic())
            except (KafkaError, asyncio.TimeoutError):
                pass
            await self._sleep_unless_stopped(interval)
