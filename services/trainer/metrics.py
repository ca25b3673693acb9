"""All Prometheus metrics of the trainer (own registry per app). The stream runtime adds
loopline_trainer_lag_records and loopline_trainer_last_progress_timestamp_seconds to it."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class TrainerMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.examples = Counter("loopline_trainer_examples_total", "Training examples consumed, by outcome",
                                ["outcome"], registry=r)  # learned | skipped (before a checkpoint) | invalid | ...
        # the per-example outcomes' children, looked up once (labels() costs more than the increment)
        self.learned, self.skipped = self.examples.labels("learned"), self.examples.labels("skipped")
        self.last_learned = Gauge("loopline_trainer_last_learned_timestamp_seconds",
                                  "Unix time the trainer last took new examples (set once per batch)", registry=r)
        self.published = Counter("loopline_trainer_versions_total", "Model versions published, by library and stage",
                                 ["library", "stage"], registry=r)
        self.retrains = Counter("loopline_trainer_retrains_total", "Batch retrains, by trigger and outcome",
                                ["trigger", "outcome"], registry=r)  # trigger: labels|schedule|drift|request|initial
        self.retrain_seconds = Histogram(
            "loopline_trainer_retrain_duration_seconds", "Batch retrain: fit, evaluate and publish every candidate",
            buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600), registry=r)
        self.prequential = Gauge("loopline_trainer_prequential_metric", "Online models' prequential metrics",
                                 ["model", "metric"], registry=r)  # model: the spec's candidate names
        self.champion_version = Gauge("loopline_trainer_champion_version", "Version of the current champion",
                                      ["model"], registry=r)
        self.window_examples = Gauge("loopline_trainer_window_examples", "Examples in the batch training window",
                                     registry=r)
