"""All Prometheus metrics of the monitor (own registry per app). The stream runtime adds
loopline_monitor_lag_records and loopline_monitor_last_progress_timestamp_seconds to it."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# From a webhook delivery's alert being read to its receiver's 2xx: retries make the tail long.
DELIVERY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


class MonitorMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.records = Counter("loopline_monitor_records_total", "Records read, by topic and outcome",
                               ["topic", "outcome"], registry=r)  # outcome: ok | invalid
        # drift statistics of the last closed window
        self.drift = Gauge("loopline_monitor_data_drift", "Data drift of the champion's inputs in the last window, "
                           "by input and statistic (psi, ks, ks_pvalue, chi2, chi2_pvalue)",
                           ["feature", "statistic"], registry=r)
        self.prediction_drift = Gauge("loopline_monitor_prediction_drift", "Drift of the champion's scores against "
                                      "its holdout's in the last window, by statistic", ["statistic"], registry=r)
        self.concept_drifts = Counter("loopline_monitor_concept_drift_detections_total",
                                      "Drifts the detector found in the champion's error stream", registry=r)
        self.performance = Gauge("loopline_monitor_live_metric", "The spec's metrics over the last labelled "
                                 "predictions, by model, version, variant and metric",
                                 ["model", "version", "variant", "metric"], registry=r)
        self.bias = Gauge("loopline_monitor_bias", "A segment's rate against the best segment of its field "
                          "(ratios and gaps), last window", ["field", "segment", "statistic"], registry=r)
        self.skew_compared = Counter("loopline_monitor_skew_compared_total",
                                     "Served feature vectors compared with the feature service's snapshot", registry=r)
        self.skew_mismatches = Counter("loopline_monitor_skew_mismatches_total",
                                       "Served features that differed from the snapshot, by feature",
                                       ["feature"], registry=r)
        self.skew_share = Gauge("loopline_monitor_skew_mismatch_share",
                                "Share of compared predictions with a differing feature, last window", registry=r)
        self.labelled = Counter("loopline_monitor_labelled_predictions_total", "Predictions joined with their label, "
                                "by variant", ["variant"], registry=r)
        self.expired = Counter("loopline_monitor_join_expired_total", "Predictions dropped from the join when their "
                               "time ran out, by what they lacked", ["reason"], registry=r)
        self.alerts = Counter("loopline_monitor_alerts_total", "Alert records written, by kind and status",
                              ["kind", "status"], registry=r)
        self.firing = Gauge("loopline_monitor_alerts_firing", "Alerts firing now, by kind and severity",
                            ["kind", "severity"], registry=r)
        # webhook delivery
        self.deliveries = Counter(
            "loopline_monitor_webhook_deliveries_total", "Webhook deliveries finished, by outcome",
            ["outcome"], registry=r)  # delivered | dead_lettered | disabled | dropped (subscription gone)
        self.attempts = Counter(
            "loopline_monitor_webhook_attempts_total", "Webhook delivery attempts, by result",
            ["result"], registry=r)  # success | gone | throttled | server_error | client_error | redirect |
        #                           timeout | network | dns | refused
        self.dead_letters = Counter(
            "loopline_monitor_webhook_dead_letters_total",
            "Webhook deliveries sent to alerts.deliveries.dlq, by reason",
            ["reason"], registry=r)  # max_attempts | client_error | redirect | forbidden_address | backlog
        self.subscriptions = Gauge("loopline_monitor_webhook_subscriptions", "Subscriptions, by state",
                                   ["state"], registry=r)  # enabled | disabled
        self.delivery_seconds = Histogram(
            "loopline_monitor_webhook_delivery_duration_seconds",
            "From reading an alert to its receiver's 2xx, retries included", buckets=DELIVERY_BUCKETS, registry=r)
        self.queued = Gauge("loopline_monitor_webhook_queued_deliveries",
                            "Deliveries waiting or in progress, all subscriptions", registry=r)
        self.pending_alerts = Gauge("loopline_monitor_webhook_pending_alerts",
                                    "Alerts read whose deliveries are not all done (their offsets are not committed)",
                                    registry=r)
