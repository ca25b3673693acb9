"""Integration fixtures: one real broker per test session, unique topics and groups per test."""
from __future__ import annotations

import os
import uuid

import pytest

from shared.kafka import ensure_topics
from shared.settings import KafkaSettings
from shared.topics import Topics
from tests.data import FRAUD_PATH
from tests.support import Broker


@pytest.fixture(scope="session")
def kafka_bootstrap():
    """`make test` starts the broker (LOOPLINE_TEST_KAFKA=external); a bare `pytest` starts its own."""
    if os.environ.get("LOOPLINE_TEST_KAFKA") == "external":
        yield os.environ["KAFKA_BOOTSTRAP_SERVERS"]
        return
    broker = Broker().start()
    try:
        yield broker.bootstrap
    finally:
        broker.destroy()


@pytest.fixture
def kafka(kafka_bootstrap) -> KafkaSettings:
    return KafkaSettings(bootstrap_servers=kafka_bootstrap)


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}."


@pytest.fixture
async def topics(kafka, prefix) -> Topics:
    t = Topics(prefix)
    await ensure_topics(kafka, t)
    return t


@pytest.fixture
def service_env(kafka_bootstrap, prefix) -> dict[str, str]:
    """Environment for a service process bound to this test's broker and topic prefix."""
    return {"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "LOOPLINE_TOPIC_PREFIX": prefix,
            "LOOPLINE_SPEC_PATH": str(FRAUD_PATH), "LOOPLINE_LOG_LEVEL": "INFO"}
