"""All Prometheus metrics of serving (own registry per app)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from shared.metrics import LATENCY_BUCKETS


class ServingMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("loopline_serving_requests_total", "Requests by route and status code",
                                ["route", "status"], registry=r)
        self.latency = Histogram("loopline_serving_request_duration_seconds", "Request latency by route",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.predictions = Counter("loopline_serving_predictions_total", "Predictions made, by variant",
                                   ["variant"], registry=r)  # champion | challenger | shadow
        self.swaps = Counter("loopline_serving_model_swaps_total", "Versions swapped in, by role",
                             ["role"], registry=r)  # champion | challenger | shadow
        self.refused = Counter("loopline_serving_model_refusals_total", "Versions refused, by reason",
                               ["reason"], registry=r)  # verification | load | compile
        self.loaded_version = Gauge("loopline_serving_loaded_version", "Version loaded per role",
                                    ["role"], registry=r)
        self.replica_lag = Gauge("loopline_serving_replica_lag_records",
                                 "Feature-state changelog records not yet applied to the replica", registry=r)
        self.replica_applied = Counter("loopline_serving_replica_records_total",
                                       "Feature-state changelog records applied to the replica", registry=r)
        self.log_pending = Gauge("loopline_serving_log_pending", "Predictions waiting to be logged", registry=r)
        self.log_undelivered = Counter("loopline_serving_log_undelivered_total",
                                       "Predictions that could not be logged (buffer full or send failed)",
                                       registry=r)
        self.gc_pauses = Histogram("loopline_serving_gc_pause_seconds", "Garbage-collector pauses by generation",
                                   ["generation"], buckets=LATENCY_BUCKETS, registry=r)
        self.forwarded = Counter("loopline_serving_forwarded_events_total", "Events forwarded to `events`",
                                 registry=r)
