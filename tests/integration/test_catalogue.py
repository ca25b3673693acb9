"""Every topic a running service creates, the runtime's changelogs included, is in the catalogue."""
from __future__ import annotations

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from shared.topics import Topics
from tests.support import ServiceProcess, free_port

pytestmark = pytest.mark.integration


async def test_every_topic_of_a_running_feature_worker_and_ingest_is_catalogued(kafka, service_env, prefix, tmp_path):
    started = []
    for module, env in [("services.ingest", "INGEST_PORT"), ("services.features", "FEATURES_PORT")]:
        port = free_port()
        proc = ServiceProcess(module, {**service_env, env: str(port), "FEATURES_DATA_DIR": str(tmp_path / "w"),
                                       "FEATURES_OFFLINE": "false"}, port=port, log_dir=tmp_path, ready_timeout=180)
        started.append(proc.start())
    try:
        admin = AIOKafkaAdminClient(**kafka.client_kwargs())
        await admin.start()
        try:
            names = sorted(t for t in await admin.list_topics() if t.startswith(prefix))
            topics = Topics(prefix)
            specs = {name: topics.spec_of(name) for name in names}  # KeyError: not catalogued
            changelogs = [n for n, spec in specs.items() if spec.name == "stream.changelog"]
            assert len(changelogs) == 2 and all(n.endswith((".entity-state.changelog", ".label-join.changelog"))
                                                for n in changelogs)
            # each service creates what it reads and writes: the model, prediction and alert topics
            # are the trainer's, serving's and the monitor's
            assert set(topics.all()) - set(names) == {topics[n] for n in (
                "models", "predictions", "alerts", "subscriptions", "alerts.deliveries.dlq")}
            configs = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, n) for n in changelogs])
            for response in configs:
                for resource in response.resources:
                    entries = {e[0]: e[1] for e in resource[4]}
                    assert entries["cleanup.policy"] == "compact"
        finally:
            await admin.close()
    finally:
        for proc in started:
            proc.stop()
