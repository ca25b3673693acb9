"""503 with Retry-After while the broker is down; recovery without losing acknowledged events."""
from __future__ import annotations

import httpx
import pytest

from shared.events import Event
from shared.settings import KafkaSettings
from tests.data import txn, wire
from tests.support import Broker, ServiceProcess, free_port, read_topic, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def broker():
    b = Broker().start()
    yield b
    b.destroy()


async def test_503_while_kafka_is_down_then_recovery(broker, prefix, tmp_path):
    port = free_port()
    env = {"KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap, "LOOPLINE_TOPIC_PREFIX": prefix,
           "INGEST_PORT": str(port), "INGEST_PRODUCE_TIMEOUT_S": "3", "INGEST_RETRY_AFTER_S": "2",
           "KAFKA_REQUEST_TIMEOUT_MS": "3000"}
    svc = ServiceProcess("services.ingest", env, port=port, log_dir=tmp_path).start()
    events = [txn(i, prefix="o-") for i in range(4)]
    try:
        assert httpx.post(f"{svc.url}/v1/events", json=events[:2]).status_code == 202
        broker.kill()
        wait_until(lambda: httpx.get(f"{svc.url}/readyz").status_code == 503, 30, "readyz 503")
        assert httpx.get(f"{svc.url}/readyz").json()["checks"]["kafka"] is False
        r = httpx.post(f"{svc.url}/v1/events", json=events[2:3], timeout=30)
        assert r.status_code == 503 and r.headers["retry-after"] == "2"
        refused = 1
        assert "retry" in r.json()["detail"]
        assert httpx.get(f"{svc.url}/healthz").status_code == 200  # alive, just not ready

        broker.start()
        wait_until(lambda: httpx.get(f"{svc.url}/readyz").status_code == 200, 60, "readyz 200 again")

        def accepted() -> bool:
            nonlocal refused
            r = httpx.post(f"{svc.url}/v1/events", json=events[2:], timeout=30)
            refused += r.status_code == 503
            return r.status_code == 202
        wait_until(accepted, 60, "202 after recovery", interval=1.0)
        # one count per batch Kafka did not acknowledge: every 503 this test got
        metrics = httpx.get(f"{svc.url}/metrics").text
        assert f'loopline_ingest_produce_errors_total{{path="http"}} {float(refused)}' in metrics.splitlines()
    finally:
        svc.stop()
    records = await read_topic(KafkaSettings(bootstrap_servers=broker.bootstrap), prefix + "events", idle_s=3)
    ids = {wire(r.value, Event)["event_id"] for r in records}
    assert {"o-0", "o-1", "o-2", "o-3"} <= ids
