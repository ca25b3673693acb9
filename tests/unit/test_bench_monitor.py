"""bench/monitor.py's in-process parts on small inputs (no broker, no peers)."""
from __future__ import annotations

import numpy as np
import pytest

from bench.monitor import (
    DRIFT_TRUTH, detections_ours, detections_river, drift_data, labelled, ours_drift, parse_args, stream_errors,
)
from tests.data import FRAUD


@pytest.mark.parametrize("share", [0.0, 0.25, 0.5, 1.0])
def test_the_label_share_is_spread_evenly(share):
    assert sum(labelled(i, share) for i in range(1000)) == round(1000 * share)


def test_our_drift_path_flags_the_strong_drifts_and_no_undrifted_column():
    reference, current, columns = drift_data(20_000, 20, seed=3)
    _, _, stats = ours_drift(reference, current, columns)
    flagged = {j for j, s in enumerate(stats) if s["psi"] > 0.2}
    assert {0, 5, 6} <= flagged <= set(DRIFT_TRUTH)
    assert all(stats[j]["ks_pvalue"] > 1e-4 for j in range(20) if j not in DRIFT_TRUTH)


def test_the_monitor_s_detector_path_sees_what_river_sees():
    predicted, labels = stream_errors("bernoulli_step", seed=1, length=3000, position=1500)
    errors = np.not_equal(predicted, labels)
    assert errors[:1500].mean() < 0.15 and errors[1500:].mean() > 0.25
    ours, river = detections_ours(FRAUD, predicted, labels), detections_river(FRAUD, predicted, labels)
    assert ours == river and any(i >= 1500 for i in ours)


def test_parse_args_refuses_unknown_parts():
    assert parse_args(["--parts", "b,d"]).parts == ["b", "d"]
    with pytest.raises(SystemExit):
        parse_args(["--parts", "e"])
