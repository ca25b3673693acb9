"""The monitor's pure logic against independent recomputations (numpy histograms, scipy's own tests,
river's detectors in-process) and its alert rules (hysteresis, grouping, bias, skew)."""
from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np
import pytest
from scipy import stats

from services.monitor.domain import (
    AlertBook, BiasWindow, InputWindows, Labelled, RollingPerformance, Sketch, Watch, chi2_binned, make_detector, psi,
    skew,
)
from shared.modeling import Predictions, bin_counts, holdout_metrics, quantile_edges
from shared.spec import parse_spec
from tests.data import FRAUD, FRAUD_TEXT

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def numeric_reference(values: np.ndarray) -> dict:
    present = values[~np.isnan(values)]
    edges = quantile_edges(present)
    return {"kind": "numeric", "edges": edges, "counts": bin_counts(edges, present),
            "missing": float(np.isnan(values).mean())}


def test_psi_and_ks_of_a_numeric_sketch_equal_a_recomputation_over_the_same_bins():
    rng = np.random.default_rng(1)
    ref = rng.normal(0, 1, 20_000)
    ref[:400] = np.nan  # 2 % missing
    cur = rng.normal(0.5, 1.2, 5_000)
    cur[:500] = np.nan  # 10 % missing
    sketch = Sketch("x", numeric_reference(ref), len(ref))
    for v in cur:
        sketch.add(None if np.isnan(v) else float(v))
    got = sketch.statistics()

    edges = quantile_edges(ref[~np.isnan(ref)])
    p = np.append(bin_counts(edges, ref), np.isnan(ref).sum()).astype(float)
    q = np.append(bin_counts(edges, cur), np.isnan(cur).sum()).astype(float)
    p, q = np.maximum(p / p.sum(), 1e-4), np.maximum(q / q.sum(), 1e-4)
    assert got["psi"] == pytest.approx(float(np.sum((q - p) * np.log(q / p))), rel=1e-9)
    # KS over the bin edges: the CDF gap of the present values, never above scipy's exact D
    p_raw, q_raw = np.asarray(bin_counts(edges, ref), float), np.asarray(bin_counts(edges, cur), float)
    pc, qc = np.cumsum(p_raw) / p_raw.sum(), np.cumsum(q_raw) / q_raw.sum()
    assert got["ks"] == pytest.approx(float(np.abs(pc - qc).max()), rel=1e-9)
    exact = stats.ks_2samp(ref[~np.isnan(ref)], cur[~np.isnan(cur)])
    assert got["ks"] <= exact.statistic + 1e-12
    assert got["ks"] > 0.5 * exact.statistic  # deciles resolve a shift of this size
    assert got["ks_pvalue"] < 1e-6


def test_add_many_equals_add_one_by_one():
    rng = np.random.default_rng(2)
    ref = rng.exponential(1.0, 10_000)
    cur = np.append(rng.exponential(1.5, 3_000), [np.nan, ref.max(), ref.min(), -1.0, 1e9])
    a, b = Sketch("x", numeric_reference(ref), len(ref)), Sketch("x", numeric_reference(ref), len(ref))
    for v in cur:
        a.add(None if np.isnan(v) else float(v))
    b.add_many(cur)
    assert a.counts.tolist() == b.counts.tolist() and a.n == b.n == len(cur)


def test_the_same_distribution_does_not_drift():
    rng = np.random.default_rng(3)
    ref = rng.normal(10, 2, 50_000)
    sketch = Sketch("x", numeric_reference(ref), len(ref))
    sketch.add_many(rng.normal(10, 2, 5_000))
    got = sketch.statistics()
    assert got["psi"] < 0.02 and got["ks_pvalue"] > 0.001


def test_category_chi_square_equals_scipy_on_the_contingency_table():
    reference = {"kind": "category", "frequencies": {"a": 0.5, "b": 0.3, "c": 0.1}, "missing": 0.1}
    sketch = Sketch("cat", reference, 1000)
    for value, n in {"a": 300, "b": 300, "c": 200, "zzz": 100}.items():  # 'zzz' is not in the reference
        for _ in range(n):
            sketch.add(value)
    for _ in range(100):
        sketch.add(None)
    got = sketch.statistics()
    table = np.array([[500, 300, 100, 0, 100], [300, 300, 200, 100, 100]], dtype=float)
    expected = stats.chi2_contingency(table, correction=False)
    assert got["chi2"] == pytest.approx(expected.statistic) and got["chi2_pvalue"] == pytest.approx(expected.pvalue)
    assert chi2_binned(np.array([5.0, 5.0]), np.array([0.0, 0.0])) == (0.0, 1.0)  # an empty side: nothing to test
    assert psi(table[0], table[1]) == pytest.approx(got["psi"])


def test_input_windows_read_numbers_bools_and_one_hot_categories_from_a_prediction_vector():
    reference = {"rows": 100, "holdout_rows": 10, "features": {
        "amount": {"kind": "numeric", "edges": [0.0, 10.0, 20.0], "counts": [0, 50, 50, 0], "missing": 0.0},
        "is_new": {"kind": "category", "frequencies": {"false": 0.5, "true": 0.5}, "missing": 0.0},
        "country": {"kind": "category", "frequencies": {"US": 0.5, "DE": 0.5}, "missing": 0.0}},
        "scores": {"edges": [0.0, 0.5, 1.0], "counts": [0, 5, 5, 0]}}
    windows = InputWindows(reference, ["amount", "is_new", "country=US", "country=DE"], window_size=3)
    assert not windows.add({"amount": 5.0, "is_new": 1.0, "country=US": 1.0, "country=DE": 0.0}, 0.2)
    assert not windows.add({"amount": None, "is_new": 0.0, "country=US": 0.0, "country=DE": 0.0}, 0.7)
    assert windows.add({"amount": 25.0, "is_new": None, "country=US": 0.0, "country=DE": 1.0}, 0.9)
    f = windows.features
    assert f["amount"].counts.tolist() == [0, 1, 0, 1, 1]  # below, [0,10), [10,20], above, missing
    assert f["is_new"].counts.tolist() == [1, 1, 0, 1]  # false, true, other, missing
    assert f["country"].counts.tolist() == [1, 1, 0, 1]  # US, DE, other, missing (no listed value hot)
    assert windows.scores.counts.tolist() == [0, 1, 2, 0, 0]
    features, scores = windows.close()
    assert set(features) == {"amount", "is_new", "country"} and "psi" in scores
    assert windows.n == 0 and f["amount"].counts.sum() == 0


def watch(threshold=0.2):
    return Watch("data_drift", "amount", "psi", threshold, True, "gbm", 1)


def test_a_value_hovering_at_the_threshold_fires_once_and_resolves_once():
    book = AlertBook(hysteresis=0.8)
    values = [0.1, 0.19, 0.21, 0.199, 0.205, 0.17, 0.22, 0.161, 0.3, 0.5, 0.2, 0.16, 0.15, 0.21]
    records = [book.observe(watch(), v, window=100, now=NOW) for v in values]
    sent = [(i, r.status, r.severity) for i, r in enumerate(records) if r is not None]
    # fires at 0.21; 0.199 .. 0.161 stay firing (not below 0.16); 0.5 escalates to critical (one record);
    # 0.16 is back at threshold x hysteresis: resolved; 0.21 fires again
    assert sent == [(2, "firing", "warning"), (9, "firing", "critical"), (11, "resolved", "critical"),
                    (13, "firing", "warning")]
    assert records[11].fingerprint == records[2].fingerprint == records[13].fingerprint
    assert records[9].details["windows"] == 8


def test_lower_is_worse_values_fire_below_and_resolve_above_the_margin():
    book = AlertBook(hysteresis=0.8)
    pvalue = Watch("data_drift", "country", "chi2_pvalue", 0.01, False)
    assert book.observe(pvalue, 0.02, window=1, now=NOW) is None
    assert book.observe(pvalue, 0.005, window=1, now=NOW).status == "firing"
    assert book.observe(pvalue, 0.0124, window=1, now=NOW) is None  # below 0.01 / 0.8
    assert book.observe(pvalue, 0.0126, window=1, now=NOW).status == "resolved"
    metric = Watch("performance", "champion", "roc_auc", 0.8, False)
    assert book.observe(metric, 0.79, window=1, now=NOW).status == "firing"
    assert book.observe(metric, 0.83, window=1, now=NOW) is None  # needs 0.8 + (1 - 0.8) * 0.2 = 0.84
    assert book.observe(metric, 0.85, window=1, now=NOW).status == "resolved"


def test_restore_resumes_firing_alerts_from_their_latest_records():
    book = AlertBook(0.8)
    fired = book.observe(watch(), 0.3, window=1, now=NOW)
    other = AlertBook(0.8)
    other.restore([fired])
    assert other.observe(watch(), 0.25, window=1, now=NOW) is None  # still firing: not sent again
    assert other.observe(watch(), 0.1, window=1, now=NOW).status == "resolved"
    again = AlertBook(0.8)
    again.restore([fired, fired.model_copy(update={"status": "resolved"})])
    assert again.firing == {}


@pytest.mark.parametrize("detector", ["adwin", "page_hinkley", "kswin"])
def test_the_spec_detector_is_rivers_own_with_the_spec_parameters(detector):
    from river import drift

    spec = parse_spec(FRAUD_TEXT.replace("detector: adwin", f"detector: {detector}"))
    ours = make_detector(spec)
    theirs = {"adwin": lambda: drift.ADWIN(delta=0.002), "page_hinkley": lambda: drift.PageHinkley(delta=0.002),
              "kswin": lambda: drift.KSWIN(alpha=0.002, seed=42)}[detector]()
    rng = np.random.default_rng(4)
    errors = np.append(rng.random(3000) < 0.05, rng.random(3000) < 0.4).astype(float)
    found_ours, found_theirs = [], []
    for i, e in enumerate(errors):
        ours.update(e)
        theirs.update(e)
        found_ours += [i] if ours.drift_detected else []
        found_theirs += [i] if theirs.drift_detected else []
    assert found_ours == found_theirs
    assert any(i >= 3000 for i in found_ours)


def test_rolling_performance_is_the_trainers_holdout_metric_over_the_last_rows():
    rng = np.random.default_rng(5)
    perf = RollingPerformance(FRAUD, size=200, every=50)
    rows = [Labelled(float(s), bool(s >= 0.5), None, int(rng.random() < s)) for s in rng.random(500)]
    results = [perf.add(r) for r in rows]
    assert [i for i, r in enumerate(results) if r is not None] == [199, 249, 299, 349, 399, 449, 499]
    last = rows[-200:]
    expected = holdout_metrics(FRAUD, [r.label for r in last],
                               Predictions(np.array([r.score for r in last]),
                                           np.array([int(r.predicted) for r in last])))
    assert results[-1] == expected and "roc_auc" in expected


def test_bias_finds_the_segment_made_unfair():
    rng = np.random.default_rng(6)
    window = BiasWindow(FRAUD)
    closed = False
    for i in range(FRAUD.monitoring.performance_window):
        country = ["US", "DE", "FR"][i % 3]
        rate = 0.05 if country == "FR" else 0.3  # FR is rarely predicted positive
        predicted = rng.random() < rate
        closed = window.add(Labelled(0.9 if predicted else 0.1, predicted, None, int(rng.random() < 0.3),
                                     {"country": country, "channel": "web"}))
    assert closed
    findings = {(f.field, f.value, f.statistic): f for f in window.close()}
    fr = findings[("country", "FR", "positive_rate_ratio")]
    assert fr.measured < 0.8 and not fr.higher_is_worse and fr.threshold == 0.8
    assert findings[("country", "US", "positive_rate_ratio")].measured > 0.8
    assert not any(k[0] == "channel" for k in findings)  # one segment: nothing to compare
    assert window.n == 0 and window.counts == {}


def test_skew_compares_the_served_features_with_the_snapshot():
    snapshot = {"a": 1.0, "b": None, "c": 1000.0, "d": 2.0}
    served = {"a": 1.0, "b": None, "c": 1000.0 + 1e-4, "d": 2.1, "amount": 3.0}
    assert skew(served, snapshot, 1e-6) == ["d"]  # c is within 1e-6 relative
    assert skew({"a": None}, {"a": 0.0}, 1e-6) == ["a"]
    assert skew({}, snapshot, 1e-6) == []


def test_bias_against_a_segment_without_errors_uses_the_gap_not_an_infinite_ratio():
    window = BiasWindow(FRAUD)
    for i in range(FRAUD.monitoring.performance_window):
        web = i % 2 == 0
        # web: never predicted positive, labels all 0 (no false positive); pos: a false positive in 4
        predicted = not web and i % 4 == 1
        window.add(Labelled(0.9 if predicted else 0.1, predicted, None, 0, {"channel": "web" if web else "pos"}))
    found = {(f.value, f.statistic): f.measured for f in window.close()}
    assert ("pos", "false_positive_rate_ratio") not in found
    assert found[("pos", "false_positive_rate_gap")] == pytest.approx(0.5)
    assert all(math.isfinite(v) for v in found.values())


def test_severity_only_escalates_while_firing_so_a_swinging_value_is_sent_once():
    book = AlertBook(hysteresis=0.8)
    sent = [book.observe(watch(), v, window=1, now=NOW) for v in (0.5, 0.3, 0.6, 0.25, 0.45)]
    assert [(r.status, r.severity) for r in sent if r is not None] == [("firing", "critical")]
    assert book.firing[sent[0].fingerprint].details["windows"] == 5
