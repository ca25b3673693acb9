"""The worker's per-event work outside the worker, as the bare loop and the in-process ceiling do it:
services.features.domain.process_event on a FeatureStore with the worker's default cache sizes and
limits, over a dict standing in for a table partition (the worker's is RocksDB)."""
from __future__ import annotations

from typing import Any

from services.features.config import FeaturesSettings
from services.features.domain import EventOutcome, decode_event, process_event
from shared.features import FeatureEngine, FeatureStore

_WORKER = FeaturesSettings.model_fields  # the worker's defaults, not this process's environment
MAX_FUTURE_S: float = _WORKER["max_future_s"].default
MAX_SNAPSHOT_BYTES: int = _WORKER["max_snapshot_bytes"].default


def new_store(engine: FeatureEngine) -> FeatureStore:
    return FeatureStore(engine, cache_events=_WORKER["cache_events"].default,
                        cache_entities=_WORKER["cache_entities"].default)


class MemoryKV(dict):
    """A table partition as a dict that remembers what was written since `take_changes`, each key
    once, in the order of its last write (as the worker's changelog records go out)."""

    def __init__(self) -> None:
        super().__init__()
        self.changes: dict[bytes, bytes | None] = {}

    def set(self, key: bytes, value: bytes) -> None:
        self[key] = value
        self.changes.pop(key, None)
        self.changes[key] = value

    def delete(self, key: bytes) -> None:
        self.pop(key, None)
        self.changes.pop(key, None)
        self.changes[key] = None

    def take_changes(self) -> dict[bytes, bytes | None]:
        changes, self.changes = self.changes, {}
        return changes


def process(store: FeatureStore, kv: MemoryKV, scope: Any, value: bytes, now: float
            ) -> tuple[dict[str, Any], EventOutcome]:
    """One Event record's bytes -> (the decoded record, what the worker's compute agent gets for it)."""
    record = decode_event(value)
    return record, process_event(store, kv, scope, record, now=now, max_future_s=MAX_FUTURE_S,
                                 max_bytes=MAX_SNAPSHOT_BYTES)
