"""The prediction log: every prediction goes to `predictions`, without ever blocking a request.

Requests put records into a bounded buffer and go on; one task sends them in batches (aiokafka's
batch API, after a short linger: the broker sees one produce request per linger, not per request)
and retries a failed batch with backoff. A full buffer drops the new record and counts it (`loopline_serving_log_undelivered_total`); /readyz fails while the buffer is full or the log has
not drained for a while, so an operator sees it. Nothing is dropped silently."""
from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from services.serving.metrics import ServingMetrics
from shared.kafka import OutRecord, send_batched

log = logging.getLogger(__name__)
BATCH = 20_000  # records per send (one send in flight: the batch bounds the log's throughput)
STALL_S = 30.0  # /readyz fails when records have waited this long without one send succeeding


class PredictionLog:
    def __init__(self, capacity: int, metrics: ServingMetrics, linger_s: float = 0.02):
        self.capacity, self.metrics, self.linger_s = capacity, metrics, linger_s
        self._buffer: deque[OutRecord] = deque()
        self._ready = asyncio.Event()
        self.last_sent = time.monotonic()
        self.failing = ""
        self.full_since = 0.0  # when the buffer last became full (0: not full)

    def put(self, record: OutRecord) -> bool:
        """Queue a record; False (and counted) if the buffer is full."""
        if len(self._buffer) >= self.capacity:
            self.metrics.log_undelivered.inc()
            if not self.full_since:
                self.full_since = time.monotonic()
                log.error("prediction log buffer full: predictions are dropped (counted in "
                          "loopline_serving_log_undelivered_total) until it drains", extra={"capacity": self.capacity})
            return False
        self.full_since = 0.0
        self._buffer.append(record)
        self._ready.set()
        return True

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def problem(self) -> str | None:
        """Why the log is not healthy (for /readyz), or None."""
        if len(self._buffer) >= self.capacity:
            return "the prediction log's buffer is full"
        if self._buffer and time.monotonic() - self.last_sent > STALL_S:
            return f"the prediction log has not drained for {time.monotonic() - self.last_sent:.0f} s: {self.failing}"
        return None

    async def run(self, producer: AIOKafkaProducer, timeout_s: float = 30.0) -> None:
        """Send forever (cancel to stop; call `drain` first to flush on shutdown)."""
        delay = 0.2
        while True:
            if not self._buffer:
                self._ready.clear()
                self.last_sent = time.monotonic()
                await self._ready.wait()
            if len(self._buffer) < BATCH:  # gather a batch: one produce request per linger, not per request
                await asyncio.sleep(self.linger_s)
            batch = list(itertools.islice(self._buffer, BATCH))  # (indexing a deque's middle is O(n))
            try:
                sent = await asyncio.wait_for(send_batched(producer, batch), timeout_s)
                await asyncio.wait_for(asyncio.gather(*sent), timeout_s)
            except (KafkaError, asyncio.TimeoutError, OSError) as exc:
                self.failing = repr(exc)
                log.warning("prediction log send failed; retrying", extra={"error": repr(exc), "in_s": delay})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            for _ in batch:
                self._buffer.popleft()
            delay, self.failing, self.last_sent = 0.2, "", time.monotonic()
            self.metrics.log_pending.set(len(self._buffer))

    async def drain(self, timeout_s: float) -> None:
        """Wait (at most timeout_s) until the buffer is empty; count what is left as undelivered."""
        deadline = time.monotonic() + timeout_s
        while self._buffer and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self._buffer:
            self.metrics.log_undelivered.inc(len(self._buffer))
            log.error("predictions not logged at shutdown", extra={"count": len(self._buffer)})
