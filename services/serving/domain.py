"""Serving's decisions as plain functions: which version answers an entity, the decision a score
makes, and the prediction record."""
from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from typing import Any

from shared.events import GLOBAL_KEY, SCHEMA_VERSION
from shared.scoring import Scored
from shared.spec import PipelineSpec

_SPAN = float(1 << 64)


def in_canary(entity: str | None, event_id: str, share: float) -> bool:
    """Whether this entity (without entities: this event) belongs to the canary share. Sticky: the
    same entity always falls on the same side for a given share, and the side is independent of
    the version, so the share's entities change only when the share does."""
    if share <= 0.0:
        return False
    key = (entity if entity is not None else event_id).encode()
    u = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") / _SPAN
    return u < share


def decision(spec: PipelineSpec, scored: Scored) -> bool | int | float | str:
    """Binary: the score at or above the spec's threshold; multiclass: the class; regression: the value."""
    task = spec.label.type
    if task == "binary":
        return bool(scored.score >= spec.serving.threshold)
    if task == "regression":
        return float(scored.score)
    return scored.label


def iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, timezone.utc).isoformat().replace("+00:00", "Z")


def prediction(*, prediction_id: str, event_id: str, occurred_at: str, predicted_at: str, entity: str | None,
               name: str, version: int, variant: str, scored: Scored, decided: Any, vector: dict[str, Any],
               feature_hash: str, state_event_time: str | None, latency_ms: float) -> dict[str, Any]:
    """The `Prediction` record (shared.events) as a JSON-ready dict."""
    return {"prediction_id": prediction_id, "type": "prediction", "schema_version": SCHEMA_VERSION,
            "event_id": event_id, "occurred_at": occurred_at, "predicted_at": predicted_at, "entity": entity,
            "model_name": name, "model_version": version, "variant": variant, "score": scored.score,
            "predicted": decided, "proba": scored.proba, "features": vector, "feature_hash": feature_hash,
            "state_event_time": state_event_time, "latency_ms": latency_ms}


def log_key(entity: str | None, event_id: str) -> bytes:
    """`predictions` is keyed by entity (the event id without entities, to spread the load)."""
    return (entity if entity is not None else event_id).encode() if entity != GLOBAL_KEY else event_id.encode()
