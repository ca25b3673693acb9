"""Integration fixtures: one real broker per test session, unique topics and groups per test."""
from __future__ import annotations

import os
import uuid

import pytest

from shared.kafka import ensure_topics
from shared.settings import KafkaSettings
from shared.topics import Topics
from tests.data import FRAUD_PATH
from tests.support import Broker, ServiceProcess, free_port


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


@pytest.fixture
def worker(service_env, tmp_path):
    """Factory of feature worker processes (the fraud spec, or one given as YAML text); every one is
    stopped at teardown, pass or fail."""
    started: list[ServiceProcess] = []

    def make(name: str = "w1", spec_yaml: str | None = None, **extra: str) -> ServiceProcess:
        env = {**service_env, "FEATURES_DATA_DIR": str(tmp_path / name),
               "FEATURES_OFFLINE_URL": str(tmp_path / "offline"), "FEATURES_OFFLINE_FLUSH_S": "1", **extra}
        if spec_yaml is not None:
            spec_path = tmp_path / f"{name}.yaml"
            spec_path.write_text(spec_yaml)
            env["LOOPLINE_SPEC_PATH"] = str(spec_path)
        port = free_port()
        proc = ServiceProcess("services.features", {**env, "FEATURES_PORT": str(port)}, port=port,
                              log_dir=tmp_path, ready_timeout=180)
        started.append(proc)
        return proc

    yield make
    for proc in started:
        proc.stop()
