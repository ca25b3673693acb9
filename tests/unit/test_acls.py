"""The ACL layout (deploy/acls.py) against what the services declare they read, write and create,
and against the commands docs/architecture.md shows."""
from __future__ import annotations

from deploy.acls import CREATE, LAYOUT, READ, WRITE, acls, kafka_acls_commands
from services.features.app import OUTPUTS as FEATURES_OUTPUTS
from services.ingest.app import TOPICS as INGEST_TOPICS
from services.monitor.app import OUTPUTS as MONITOR_OUTPUTS
from services.monitor.app import SOURCES as MONITOR_SOURCES
from services.trainer.app import OUTPUTS as TRAINER_OUTPUTS
from tests.data import ROOT


def granted(component: str) -> dict[str, set[str]]:
    """Operations per catalogue topic (no prefix) the component is granted."""
    out: dict[str, set[str]] = {}
    for acl in acls(component):
        if acl.resource == "topic" and acl.pattern == "literal":
            out.setdefault(acl.name, set()).add(acl.operation)
    return out


def test_every_literal_topic_is_catalogued_under_any_prefix():
    for component in LAYOUT:
        for prefix in ("", "acme", "acme."):
            acls(component, prefix)  # Topics raises KeyError for a name not in the catalogue


def test_the_services_may_create_and_use_the_topics_they_declare():
    ingest = granted("ingest")
    assert all(CREATE in ingest[t] for t in INGEST_TOPICS)
    for component, outputs in (("features", FEATURES_OUTPUTS), ("trainer", TRAINER_OUTPUTS),
                               ("monitor", MONITOR_OUTPUTS)):
        ops = granted(component)
        assert all({WRITE, CREATE} <= ops[t] for t in outputs), component
    assert all({READ, CREATE} <= granted("monitor")[t] for t in MONITOR_SOURCES)


def test_prefixed_names_and_groups_get_the_deployment_prefix():
    names = {(a.resource, a.name, a.pattern) for a in acls("features", "acme")}
    assert ("topic", "acme.loopline.features.", "prefixed") in names
    assert ("group", "acme.loopline.features.", "prefixed") in names
    assert ("group", "acme.loopline.ingest.raw", "literal") in {(a.resource, a.name, a.pattern)
                                                               for a in acls("ingest", "acme")}


def test_the_documented_commands_are_the_layouts():
    doc = (ROOT / "docs" / "architecture.md").read_text()
    for line in kafka_acls_commands("ingest", "User:ingest", "acme.", "kafka-1:9093", "admin.properties"):
        assert line in doc, line
