"""The topic catalogue: every Kafka topic Loopline uses, its record model, key and retention.

Services name topics only through `Topics`, which applies the deployment's prefix; a test
checks that every topic a service touches is in this catalogue.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from pydantic import BaseModel

from shared import events as ev

DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class TopicSpec:
    name: str
    model: type[BaseModel] | None  # None: raw bytes as sent by a producer (validated on the way in)
    key: str
    partitions: int
    compacted: bool = False
    retention_ms: int | None = 7 * DAY_MS
    description: str = ""
    # For topics the stream runtime names per app and table: the real name (prefix removed) matches it.
    pattern: str | None = None

    def configs(self) -> dict[str, str]:
        """Kafka topic configs for creation."""
        cfg = {"cleanup.policy": "compact" if self.compacted else "delete"}
        cfg["retention.ms"] = str(self.retention_ms if self.retention_ms is not None else -1)
        return cfg


CATALOGUE: dict[str, TopicSpec] = {
    t.name: t
    for t in [
        TopicSpec("events.raw", None, "any (producer's choice)", 3,
                  description="Events written straight to Kafka by producers; ingest validates them"),
        TopicSpec("labels.raw", None, "any (producer's choice)", 3,
                  description="Labels written straight to Kafka by producers; ingest validates them"),
        TopicSpec("events", ev.Event, "entity key (GLOBAL_KEY without entities)", 6, retention_ms=30 * DAY_MS,
                  description="Validated events, the log everything downstream reads"),
        TopicSpec("labels", ev.Label, "target event_id", 6, retention_ms=30 * DAY_MS,
                  description="Validated outcomes, keyed by the event they belong to"),
        TopicSpec("events.dlq", None, "as the rejected record", 3, retention_ms=30 * DAY_MS,
                  description="Rejected records, unchanged, with the reason in dlq.* headers"),
        TopicSpec("features", ev.FeatureSnapshot, "entity key (GLOBAL_KEY without entities)", 6,
                  description="Point-in-time feature snapshot per event; feeds serving and training"),
        TopicSpec("snapshots.by-event", ev.FeatureSnapshot, "event_id", 6, retention_ms=14 * DAY_MS,
                  description="Snapshots re-keyed by event id, co-partitioned with labels for the join"),
        TopicSpec("training-examples", ev.TrainingExample, "entity key", 6, retention_ms=30 * DAY_MS,
                  description="Snapshots joined with their labels"),
        TopicSpec("models", ev.ModelVersion, "'<model name>:<version>'", 1, compacted=True, retention_ms=None,
                  description="The model registry log: the latest record per version is its state"),
        TopicSpec("predictions", ev.Prediction, "entity key (event_id without entities)", 6,
                  description="Every prediction with model version and features used"),
        TopicSpec("stream.changelog", None, "as the table's", 6, compacted=True, retention_ms=None,
                  pattern=r"loopline\.[a-z][a-z0-9_-]*\.[A-Za-z0-9_-]+\.[a-z][a-z0-9-]*\.changelog",
                  description="A stream table's changelog (shared.stream): '<app id>.<table>.changelog', partitions "
                              "as the table's source topics"),
        TopicSpec("alerts", ev.Alert, "alert fingerprint", 1, compacted=True, retention_ms=None,
                  description="Monitor findings; a resolve reuses the firing alert's key"),
        TopicSpec("subscriptions", ev.Subscription, "subscription id", 1, compacted=True, retention_ms=None,
                  description="On-call webhook subscriptions (a tombstone removes one); the monitor rebuilds them"),
        TopicSpec("alerts.deliveries.dlq", None, "subscription id", 1, retention_ms=30 * DAY_MS,
                  description="Webhook deliveries given up after the last attempt: the payload, the reason in "
                              "dlq.* headers"),
    ]
}


class Topics:
    """Resolves catalogue names to real topic names under a deployment prefix."""

    def __init__(self, prefix: str = ""):
        # 'acme' means acme.events, not acmeevents; a prefix that already ends in a separator is kept.
        if prefix and not prefix.endswith((".", "-", "_")):
            prefix += "."
        self.prefix = prefix

    def __getitem__(self, base: str) -> str:
        if base not in CATALOGUE or CATALOGUE[base].pattern:
            raise KeyError(f"topic '{base}' is not in the catalogue (shared/topics.py)")
        return self.prefix + base

    def spec_of(self, name: str) -> TopicSpec:
        """Catalogue entry of a real (prefixed) topic name; KeyError if it has none."""
        if not name.startswith(self.prefix):
            raise KeyError(f"topic '{name}' does not have the prefix '{self.prefix}'")
        base = name.removeprefix(self.prefix)
        spec = CATALOGUE.get(base)
        if spec is not None and not spec.pattern:
            return spec
        for spec in CATALOGUE.values():
            if spec.pattern and re.fullmatch(spec.pattern, base):
                return spec
        raise KeyError(f"topic '{name}' is not in the catalogue (shared/topics.py)")

    def all(self) -> list[str]:
        """The real names of the catalogue's fixed topics (not the per-app runtime topics)."""
        return [self.prefix + name for name, spec in CATALOGUE.items() if not spec.pattern]

    def changelog(self, app_id: str, table: str) -> str:
        """The changelog topic of a stream app's table (`app_id` is prefixed already, see group)."""
        return f"{app_id}.{table}.changelog"

    def group(self, service: str, purpose: str = "main") -> str:
        """Consumer group name for a service (prefixed like topics)."""
        return f"{self.prefix}loopline.{service}.{purpose}"
