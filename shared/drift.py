"""The drift statistics of binned samples, one definition for everything that reports drift: the
monitor (live windows against a model's reference statistics) and the exploration report (the
training window against recent data).

Numbers are binned into the reference sample's deciles (`shared.modeling.quantile_edges` and
`bin_counts`) plus a missing bin; categories into the reference's values plus 'other' and missing.
PSI covers every bin; the two-sample test suits the type: Kolmogorov-Smirnov over the ordered numeric
bins (the exact distance restricted to the reference's edges, so never above it), chi-square over the
category bins.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import special, stats

from shared.modeling import bin_counts, quantile_edges

__all__ = ["SHARE_FLOOR", "chi2_binned", "compare_samples", "ks_binned", "psi"]

KS_EXACT_MAX_N = 10_000  # effective sample sizes above use the asymptotic Kolmogorov distribution
SHARE_FLOOR = 1e-4  # PSI's shares are floored here: an empty bin on one side would make it infinite


def psi(reference: np.ndarray, current: np.ndarray) -> float:
    """Population stability index of two histograms over the same bins (counts or shares):
    sum (q - p) ln(q / p) = KL(q||p) + KL(p||q), shares floored at SHARE_FLOOR."""
    p = np.maximum(reference / max(reference.sum(), 1e-300), SHARE_FLOOR)
    q = np.maximum(current / max(current.sum(), 1e-300), SHARE_FLOOR)
    return float(np.sum(special.rel_entr(q, p) + special.rel_entr(p, q)))


def ks_binned(reference: np.ndarray, current: np.ndarray, n_ref: float, n_cur: float) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov distance of two histograms over the same ordered bins (the
    largest CDF gap at a bin edge: the exact D restricted to the edges, so never above it) and its
    p-value (scipy's kstwo with the effective sample size n·m/(n+m), kstwobign above 10,000)."""
    if n_ref <= 0 or n_cur <= 0:
        return 0.0, 1.0
    gap = np.abs(np.cumsum(reference) / reference.sum() - np.cumsum(current) / current.sum())
    d = float(gap.max())
    en = max(1, round(n_ref * n_cur / (n_ref + n_cur)))
    if en <= KS_EXACT_MAX_N:
        return d, float(stats.kstwo.sf(d, en))
    # beyond, the limiting Kolmogorov distribution (what kstwo tends to; its exact sf costs tens of ms)
    return d, float(stats.kstwobign.sf(d * math.sqrt(en)))


def chi2_binned(reference: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    """Chi-square test of homogeneity of two category histograms (scipy's chi2_contingency; bins
    empty on both sides dropped). Returns the statistic and its p-value."""
    table = np.vstack([reference, current])
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or (table.sum(axis=1) == 0).any():
        return 0.0, 1.0
    result = stats.chi2_contingency(table, correction=False)
    return float(result.statistic), float(result.pvalue)


def compare_samples(reference: Sequence[Any], current: Sequence[Any], kind: str) -> dict[str, float]:
    """The monitor's statistics of two whole samples of one input, binned as the monitor bins a live
    window against a reference: `kind` 'numeric' (None/NaN missing) or 'category' (None missing,
    values compared as text). Returns psi and ks, ks_pvalue (numeric) or chi2, chi2_pvalue (category)."""
    if kind == "numeric":
        ref = np.asarray(reference, dtype=np.float64)  # None becomes NaN
        cur = np.asarray(current, dtype=np.float64)
        edges = quantile_edges(ref)
        ref_counts = np.asarray(bin_counts(edges, ref) + [int(np.isnan(ref).sum())], dtype=np.float64)
        cur_counts = np.asarray(bin_counts(edges, cur) + [int(np.isnan(cur).sum())], dtype=np.float64)
        out = {"psi": psi(ref_counts, cur_counts)}
        if len(edges):
            out["ks"], out["ks_pvalue"] = ks_binned(ref_counts[:-1], cur_counts[:-1], ref_counts[:-1].sum(),
                                                    cur_counts[:-1].sum())
        else:
            out["ks"], out["ks_pvalue"] = 0.0, 1.0
        return out
    ref_values = Counter(None if v is None else str(v) for v in reference)
    values = [v for v, _ in ref_values.most_common() if v is not None]
    index = {v: i for i, v in enumerate(values)}

    def histogram(sample: Counter) -> np.ndarray:
        counts = np.zeros(len(values) + 2)  # the reference's values, then 'other', then missing
        for value, n in sample.items():
            counts[-1 if value is None else index.get(value, len(values))] += n
        return counts

    ref_counts = histogram(ref_values)
    cur_counts = histogram(Counter(None if v is None else str(v) for v in current))
    chi2, pvalue = chi2_binned(ref_counts, cur_counts)
    return {"psi": psi(ref_counts, cur_counts), "chi2": chi2, "chi2_pvalue": pvalue}
