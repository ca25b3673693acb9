"""The topic catalogue: every Kafka topic Loopline uses, its record model, key and retention.

Services name topics only through `Topics`, which applies the deployment's prefix; a test
checks that every topic a service touches is in this catalogue.
"""
from __future__ import annotations

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
        TopicSpec("models", ev.ModelRecord, "'<name>:<version>' and '<name>:stage'", 1, compacted=True,
                  retention_ms=None, description="The model registry log"),
        TopicSpec("predictions", ev.Prediction, "entity key (event_id without entities)", 6,
                  description="Every prediction with model version and features used"),
        TopicSpec("alerts", ev.Alert, "alert fingerprint", 1, compacted=True, retention_ms=None,
                  description="Monitor findings; a resolve reuses the firing alert's key"),
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
        if base not in CATALOGUE:
            raise KeyError(f"topic '{base}' is not in the catalogue (shared/topics.py)")
        return self.prefix + base

    def spec_of(self, name: str) -> TopicSpec:
        """Catalogue entry of a real (prefixed) topic name."""
        return CATALOGUE[name.removeprefix(self.prefix)]

    def all(self) -> list[str]:
        return [self.prefix + name for name in CATALOGUE]

    def group(self, service: str, purpose: str = "main") -> str:
        """Consumer group name for a service (prefixed like topics)."""
        return f"{self.prefix}loopline.{service}.{purpose}"
