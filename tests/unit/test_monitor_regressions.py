"""services/monitor defects found by bench/monitor.py, each pinned by a test (no broker)."""
from __future__ import annotations

import math
import sys
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry

from services.monitor.config import MonitorSettings
from services.monitor.domain import AlertBook, Labelled, Watch
from services.monitor.metrics import MonitorMetrics
from services.monitor.service import Monitor
from shared.registry import Registry
from shared.spec import parse_spec
from tests.data import FRAUD, FRAUD_TEXT

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def _monitor(spec=FRAUD) -> Monitor:
    return Monitor(spec, MonitorSettings(), Registry(), MonitorMetrics())


def test_a_page_hinkley_detection_makes_a_valid_alert_with_a_finite_value():
    old = "concept_drift: {detector: adwin, delta: 0.002}"
    assert old in FRAUD_TEXT
    spec = parse_spec(FRAUD_TEXT.replace(old, "concept_drift: {detector: page_hinkley, delta: 0.005}"))
    monitor = _monitor(spec)
    alerts = []
    for i in range(3000):  # errors 0.1 then 0.9: Page-Hinkley detects the rise
        wrong = (i % 10 == 0) if i < 1500 else (i % 10 != 0)
        row = Labelled(score=1.0, predicted=True, proba=None, label=0 if wrong else 1)
        alerts += monitor._labelled({"n": "m", "v": 1, "r": "champion", "s": 1.0, "d": True}, {"y": row.label})
    drift = [a for a in alerts if a.kind == "concept_drift"]
    assert drift, "Page-Hinkley found no drift"
    assert all(math.isfinite(a.value) and 0 <= a.value <= 1 for a in drift)
    assert math.isfinite(drift[0].details["error_estimate"])


def test_an_infinite_statistic_fires_an_alert_instead_of_raising():
    book = AlertBook(0.9)
    w = Watch("bias", "country=ES", "false_negative_rate_ratio", 1.25, True, "m", 1)
    alert = book.observe(w, math.inf, window=2000, now=NOW)
    assert alert is not None and alert.status == "firing" and alert.value == sys.float_info.max
    assert alert.severity == "critical"
    assert book.observe(w, 1.0, window=2000, now=NOW).status == "resolved"


def test_create_app_leaves_faust_s_sensor_monitor_alone(tmp_path):
    import faust.sensors.monitor

    from services.monitor.app import create_app

    app = create_app(MonitorSettings(data_dir=tmp_path))
    assert isinstance(app.monitor, faust.sensors.monitor.Monitor)  # the worker attaches it at start
    assert isinstance(app.analysis, Monitor)
    assert isinstance(app.analysis.metrics.registry, CollectorRegistry)


def test_a_far_future_record_is_refused_and_does_not_move_the_join_clock():
    import pytest

    from shared.errors import ValidationFailed
    from tests.data import DictKV

    monitor, view = _monitor(), DictKV()
    ex = {"event_id": "e1", "label": True, "data": {}, "labelled_at": "2026-12-01T00:00:00+00:00"}
    monitor.on_example(view, ex)
    clock = monitor.clock
    with pytest.raises(ValidationFailed) as refused:
        monitor.on_example(view, {**ex, "event_id": "e2", "labelled_at": "2099-01-01T00:00:00+00:00"})
    assert refused.value.reason_code == "future" and monitor.clock == clock
    assert view.get(b"le1") is not None  # what waited is still there


def test_an_online_champions_new_versions_feed_one_concept_drift_detector(tmp_path):
    """Found by the SEA end-to-end run: the detector started afresh at every champion version, and an
    online champion publishes one every few hundred examples, so a drift that doubled the error rate
    went unseen. Checkpoints of one online model continue the detector; a batch retrain restarts it."""
    from tests.data import model_version

    base = model_version(FRAUD, str(tmp_path), None, name="m", version=1, stage="champion", library="river")

    def run(evaluation: str) -> list:
        monitor = _monitor()
        for v in range(1, 31):
            monitor.registry.apply(base.model_copy(update={"version": v, "evaluation": evaluation}))
        alerts = []
        for i in range(3000):  # a new version every 100 rows; errors 0.1 then 0.5 from row 1500
            wrong = (i % 10 == 0) if i < 1500 else (i % 2 == 0)
            entry = {"n": "m", "v": 1 + i // 100, "r": "champion", "s": 1.0, "d": True}
            alerts += monitor._labelled(entry, {"y": 0 if wrong else 1})
        return [a for a in alerts if a.kind == "concept_drift"]

    assert run("prequential"), "no drift found across an online model's versions"
    assert not run("holdout")  # each batch version saw a constant error rate
