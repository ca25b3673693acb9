"""The raw bridge's batch handling without a broker: retries, prompt stop, readiness, dead letters."""
from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka import ConsumerRecord

from services.ingest.bridge import STOP_GRACE_S, BridgeHealth, RawBridge
from shared.kafka import ConsumerStopped
from services.ingest.domain import Limits
from services.ingest.metrics import IngestMetrics
from shared.errors import KafkaUnavailable
from shared.events import Event
from shared.kafka import DLQ_MAX_VALUE_BYTES, header_dict
from shared.serialization import dumps
from shared.settings import KafkaSettings
from shared.topics import Topics
from tests.data import TXN as GOOD, VALIDATOR as V, wire


class FakePublisher:
    """Fails the first `failures` publishes (or all, with None); `hang` makes a publish never return."""

    def __init__(self, failures: int | None = 0, hang: bool = False):
        self.failures, self.hang = failures, hang
        self.calls = 0
        self.sent: dict[str, list] = {}

    async def publish(self, topic, records):
        self.calls += 1
        if self.hang:
            await asyncio.Event().wait()
        if self.failures is None or self.calls <= self.failures:
            raise KafkaUnavailable("Kafka did not acknowledge within 10s")
        self.sent.setdefault(topic, []).extend(records)


def bridge(publisher, stall_after_s: float = 60.0, limits: Limits = Limits()) -> RawBridge:
    b = RawBridge(KafkaSettings(), Topics(""), V, publisher, IngestMetrics(), limits,
                  stall_after_s=stall_after_s)
    b.running = True
    return b


def rec(value: bytes | None, offset: int = 0, topic: str = "events.raw") -> ConsumerRecord:
    return ConsumerRecord(topic, 0, offset, 0, 0, b"k", value, None, 1, len(value or b""), [])


def counter(b: RawBridge, name: str, **labels) -> float:
    return b.metrics.registry.get_sample_value(name, labels) or 0.0


async def test_a_failing_produce_is_retried_with_backoff_until_it_succeeds():
    pub = FakePublisher(failures=2)
    b = bridge(pub)
    t0 = time.monotonic()
    await b.handle([rec(dumps(GOOD))])
    assert pub.calls == 3 and len(pub.sent["events"]) == 1
    assert 0.5 <= time.monotonic() - t0 < 2.0  # waited 0.2 + 0.4 s
    assert counter(b, "loopline_ingest_produce_errors_total", path="bridge") == 2
    assert counter(b, "loopline_ingest_accepted_total", source="kafka", kind="event") == 1
    assert b.problem() is None and b.health.failing_since is None


async def test_stop_ends_the_retry_loop_promptly_and_leaves_the_batch_uncommitted():
    b = bridge(FakePublisher(failures=None))
    stop = asyncio.Event()
    b._stop = stop
    task = asyncio.create_task(b.handle([rec(dumps(GOOD))]))
    await asyncio.sleep(3.5)  # several attempts; the backoff is at 1.6 s by now
    assert not task.done()
    stop.set()
    t0 = time.monotonic()
    with pytest.raises(ConsumerStopped):  # consume_batches commits only after handle returns
        await asyncio.wait_for(task, 2.0)
    assert time.monotonic() - t0 < 0.5
    assert counter(b, "loopline_ingest_accepted_total", source="kafka", kind="event") == 0


async def test_stop_abandons_a_produce_that_hangs_after_a_short_grace():
    b = bridge(FakePublisher(hang=True))
    stop = asyncio.Event()
    b._stop = stop
    task = asyncio.create_task(b.handle([rec(dumps(GOOD))]))
    await asyncio.sleep(0.2)
    stop.set()
    t0 = time.monotonic()
    with pytest.raises(ConsumerStopped):
        await asyncio.wait_for(task, STOP_GRACE_S + 2.0)
    assert time.monotonic() - t0 < STOP_GRACE_S + 0.5


async def test_readiness_reports_a_bridge_that_keeps_failing_to_produce():
    b = bridge(FakePublisher(failures=None), stall_after_s=1.0)
    stop = asyncio.Event()
    b._stop = stop
    task = asyncio.create_task(b.handle([rec(dumps(GOOD))]))
    await asyncio.sleep(0.5)
    assert b.problem() is None  # a short outage is not a stall
    await asyncio.sleep(1.5)
    problem = b.problem()
    assert problem is not None and problem.startswith("producing to Kafka has failed for")
    assert "did not acknowledge" in problem
    stop.set()
    with pytest.raises(ConsumerStopped):
        await task
    b.running = False
    assert b.problem() == "the raw bridge's consumer is not running"


def test_readiness_reports_records_waiting_without_progress_but_not_an_idle_bridge():
    h = BridgeHealth(stall_after_s=10, last_progress=100.0)
    h.sampled(0, 105.0)
    assert h.problem(now=1000.0) is None  # idle for long, nothing waiting: fine
    h.sampled(5, 1000.0)
    assert h.problem(now=1005.0) is None  # records just arrived
    h.last_progress = 1003.0
    h.sampled(3, 1008.0)
    assert h.problem(now=1012.0) is None  # still waiting, but a batch was done 9 s ago
    assert h.problem(now=1013.5) == "3 raw records waiting and none processed for 10 s"
    h.sampled(0, 1014.0)
    assert h.problem(now=1100.0) is None
    h.batch_since = 1100.0
    assert h.problem(now=1111.0) == "one batch has been in progress for 11 s"


async def test_invalid_and_oversized_records_are_dead_lettered_in_the_same_batch_as_good_ones():
    pub = FakePublisher()
    b = bridge(pub, limits=Limits(max_record_bytes=2000))
    huge_invalid = b'{"x": "' + b"y" * 1_048_000 + b'"}'
    records = [rec(dumps(GOOD), 0), rec(huge_invalid, 1), rec(dumps({**GOOD, "user_id": "u" * 64}), 2),
               rec(dumps({**GOOD, "ts": "9999-12-31T23:59:59Z"}), 3)]
    await b.handle(records)
    assert [wire(v, Event)["data"]["user_id"] for _, v, _ in pub.sent["events"]] == ["u1", "u" * 64]
    dlq = pub.sent["events.dlq"]
    assert len(dlq) == 2
    (_, big_value, big_headers), (_, future_value, future_headers) = dlq
    h = header_dict(big_headers)
    assert len(big_value) == DLQ_MAX_VALUE_BYTES and h["dlq.value.truncated"] == str(len(huge_invalid))
    assert h["dlq.error.code"] == "missing" and h["dlq.source.offset"] == "1"
    assert header_dict(future_headers)["dlq.error.code"] == "future"
    assert counter(b, "loopline_ingest_rejected_total", source="kafka", kind="event", reason="future") == 1


async def test_a_valid_record_whose_event_is_too_large_is_dead_lettered_not_retried():
    pub = FakePublisher()
    b = bridge(pub, limits=Limits(max_record_bytes=1024))
    await b.handle([rec(dumps({**GOOD, "user_id": "u" * 60}) + b" " * 2000)])  # valid, event ~0.5 kB
    assert len(pub.sent["events"]) == 1
    small = Limits(max_record_bytes=300)
    b = bridge(pub := FakePublisher(), limits=small)
    await b.handle([rec(dumps(GOOD))])
    assert pub.calls == 1 and "events" not in pub.sent
    assert header_dict(pub.sent["events.dlq"][0][2])["dlq.error.code"] == "too_large"
