"""All Prometheus metrics of the monitor (own registry per app). The stream runtime adds
loopline_monitor_lag_records and loopline_monitor_last_progress_timestamp_seconds to it."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# From a webhook delivery's alert being read to its receiver's 2xx: retries make the tail long.
DELIVERY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


class MonitorMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
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
