"""shared.drift.compare_samples bins two whole samples exactly as the monitor bins a live window against
a model's reference statistics, so the exploration report shows the statistics the monitor alerts on."""
from __future__ import annotations

import numpy as np
import pytest

from services.monitor.domain import Sketch
from shared.drift import compare_samples
from shared.modeling import bin_counts, quantile_edges


def test_numeric_samples_give_the_monitors_statistics():
    rng = np.random.default_rng(5)
    reference = rng.lognormal(3, 1, 5000)
    reference[rng.random(5000) < 0.05] = np.nan
    current = rng.lognormal(3.3, 1.1, 1500)
    current[rng.random(1500) < 0.12] = np.nan
    present = reference[~np.isnan(reference)]
    edges = quantile_edges(present)
    sketch = Sketch("amount", {"kind": "numeric", "edges": edges, "counts": bin_counts(edges, present),
                               "missing": float(np.isnan(reference).mean())}, len(reference))
    sketch.add_many(current)
    expected = sketch.statistics()
    got = compare_samples(list(reference), [None if np.isnan(v) else float(v) for v in current], "numeric")
    assert got.keys() == expected.keys() == {"psi", "ks", "ks_pvalue"}
    for k in expected:
        assert got[k] == pytest.approx(expected[k], rel=1e-9), k
    assert got["psi"] > 0.1 and got["ks_pvalue"] < 1e-6  # the shift is found


def test_category_samples_give_the_monitors_statistics():
    rng = np.random.default_rng(6)
    values = ["pos", "web", "app"]
    reference = [str(v) for v in rng.choice(values, 4000, p=[0.5, 0.3, 0.2])] + [None] * 100
    current = [str(v) for v in rng.choice(values + ["kiosk"], 1000, p=[0.3, 0.3, 0.3, 0.1])] + [None] * 50
    counts = {v: reference.count(v) for v in values}
    order = sorted(values, key=lambda v: -counts[v])
    sketch = Sketch("channel", {"kind": "category", "frequencies": {v: counts[v] / len(reference) for v in order},
                                "missing": 100 / len(reference)}, len(reference))
    for v in current:
        sketch.add(v)
    expected = sketch.statistics()
    got = compare_samples(reference, current, "category")
    assert got.keys() == expected.keys() == {"psi", "chi2", "chi2_pvalue"}
    for k in expected:
        assert got[k] == pytest.approx(expected[k], rel=1e-9), k
    same = compare_samples(reference, reference, "category")
    assert same["psi"] == pytest.approx(0.0, abs=1e-12) and same["chi2_pvalue"] == pytest.approx(1.0)
