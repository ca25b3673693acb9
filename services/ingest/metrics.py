"""All Prometheus metrics of the ingest service (own registry: one per app instance)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from shared.metrics import LATENCY_BUCKETS


class IngestMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.accepted = Counter(
            "loopline_ingest_accepted_total", "Records acknowledged by Kafka",
            ["source", "kind"], registry=self.registry)  # source: http|kafka, kind: event|label
        self.rejected = Counter(
            "loopline_ingest_rejected_total", "Records rejected, by reason code",
            ["source", "kind", "reason"], registry=self.registry)  # reason: shared.events.REASON_CODES
        self.request_seconds = Histogram(
            "loopline_ingest_request_duration_seconds", "HTTP request latency",
            ["route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.produce_errors = Counter(
            "loopline_ingest_produce_errors_total", "Batches Kafka did not acknowledge in time",
            ["path"], registry=self.registry)  # path: http|bridge
        self.kafka_up = Gauge(
            "loopline_ingest_kafka_up", "1 when the broker answers metadata requests", registry=self.registry)
        self.bridge_lag = Gauge(
            "loopline_ingest_bridge_lag_records", "Raw-topic records not yet committed", registry=self.registry)
