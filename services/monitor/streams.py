"""The monitor's stream handler: predictions, training examples (labels) and feature snapshots in,
alerts out. One handler over the three topics, so the join table sees them in one order."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import orjson

from services.monitor.metrics import MonitorMetrics
from services.monitor.service import JOIN_PARTITION, Monitor
from shared.errors import ValidationFailed
from shared.events import Alert
from shared.kafka import OutRecord, dead_letter
from shared.stream import Batch, BatchTable
from shared.topics import Topics

log = logging.getLogger(__name__)
SERVICE = "monitor"
# the fields each input must carry (the rest is optional for the monitor)
REQUIRED = {
    "predictions": ("event_id", "model_name", "model_version", "variant", "score", "predicted"),
    "training-examples": ("event_id", "label"),
    "features": ("event_id",),
}


def decode(kind: str, value: bytes | None) -> dict[str, Any]:
    if value is None:
        raise ValidationFailed([{"field": "", "code": "empty", "reason": "no value"}])
    try:
        record = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise ValidationFailed([{"field": "", "code": "invalid_json", "reason": str(exc)}]) from None
    if not isinstance(record, dict):
        raise ValidationFailed([{"field": "", "code": "not_an_object", "reason": "a record is a JSON object"}])
    for name in REQUIRED[kind]:
        if record.get(name) is None:
            raise ValidationFailed([{"field": name, "code": "missing", "reason": f"{kind} records carry {name}"}])
    return record


@dataclass
class MonitorStream:
    monitor: Monitor
    topics: Topics
    metrics: MonitorMetrics

    def __post_init__(self) -> None:
        self.kinds = {self.topics[k]: k for k in REQUIRED}
        self.handlers = {"predictions": self.monitor.on_prediction, "training-examples": self.monitor.on_example,
                         "features": self.monitor.on_snapshot}

    def __call__(self, batch: Batch, tables: dict[str, BatchTable]) -> list[OutRecord]:
        view = tables["join"].view(JOIN_PARTITION)
        out: list[OutRecord] = []
        alerts: list[Alert] = []
        for tp, messages in batch.items():
            kind = self.kinds[tp.topic]
            handle, counted = self.handlers[kind], self.metrics.records.labels(kind, "ok")
            for msg in messages:
                try:
                    record = decode(kind, msg.value)
                    alerts += handle(view, record)
                except (ValidationFailed, KeyError, TypeError, ValueError) as exc:
                    code = exc.reason_code if isinstance(exc, ValidationFailed) else "invalid"
                    if code == "invalid":  # a field of the wrong type, or a bug: either way it must show
                        log.warning("record not usable", exc_info=True,
                                    extra={"topic": tp.topic, "partition": tp.partition, "offset": msg.offset})
                    self.metrics.records.labels(kind, code).inc()
                    out.append(dead_letter(self.topics["events.dlq"], msg, exc, SERVICE, code))
                    continue
                counted.inc()
        self.monitor.expire(view)
        return out + self.alert_records(alerts)

    def alert_records(self, alerts: list[Alert]) -> list[OutRecord]:
        topic = self.topics["alerts"]
        for alert in alerts:
            self.metrics.alerts.labels(alert.kind, alert.status).inc()
        if alerts:
            self.metrics.firing.clear()
            for a in self.monitor.book.firing.values():
                self.metrics.firing.labels(a.kind, a.severity).inc()
        return [OutRecord(topic, a.fingerprint.encode(), a.model_dump_json().encode()) for a in alerts]
