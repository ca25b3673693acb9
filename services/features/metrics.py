"""All Prometheus metrics of the feature service (own registry per app). The stream runtime adds
loopline_features_lag_records and loopline_features_last_progress_timestamp_seconds to it."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from shared.metrics import LATENCY_BUCKETS


class FeaturesMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.events = Counter("loopline_features_events_total", "Events processed, by outcome",
                              ["outcome"], registry=r)  # new | duplicate | late | invalid | invalid_json | future | too_large | state_error
        self.late = Counter("loopline_features_late_events_total", "Events beyond the allowed lateness",
                            registry=r)
        self.snapshot_latency = Histogram(
            "loopline_features_snapshot_latency_seconds", "From ingest acknowledgement to snapshot emitted",
            buckets=LATENCY_BUCKETS, registry=r)
        self.labels = Counter("loopline_features_labels_total", "Labels seen by the join, by outcome",
                              ["outcome"], registry=r)  # waiting | joined | duplicate | conflict | late_label | label_before_event | invalid | future
        self.examples = Counter("loopline_features_training_examples_total", "Training examples emitted",
                                registry=r)
        self.expired = Counter("loopline_features_join_expired_total", "Join entries expired, by kind",
                               ["kind"], registry=r)  # snapshot (never labelled) | label (event unseen) | joined | late_label
        self.offline_rows = Counter("loopline_features_offline_rows_total", "Rows written to the offline store",
                                    ["dataset"], registry=r)
