"""The monitor's pure logic: live windows against a model version's reference statistics (binned
sketches, constant memory per input), their drift statistics (shared.drift), concept-drift detectors
(river), rolling performance and bias by segment (the trainer's own holdout metrics), train/serve
skew, and the alert book that turns statistics into firing and resolved alerts with hysteresis.
Nothing here touches Kafka or the clock (times are passed in)."""
from __future__ import annotations

import hashlib
import math
import sys
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from shared.drift import SHARE_FLOOR, chi2_binned, ks_binned, psi  # noqa: F401 (the statistics live in shared)
from shared.events import Alert
from shared.modeling import Predictions, bin_counts, encode_label, higher_is_better, holdout_metrics
from shared.spec import DriftSpec, PipelineSpec

MISSING = "<missing>"


class Sketch:
    """The live window of one input, binned like its reference: numbers into the reference's
    quantile bins (shared.modeling.bin_counts semantics) plus a missing bin, categories into the
    reference's values plus 'other' and missing. Memory is fixed by the reference, not the window."""

    def __init__(self, name: str, reference: dict[str, Any], rows: int):
        self.name, self.kind = name, reference["kind"]
        self.n = 0
        if self.kind == "numeric":
            self.edges = [float(e) for e in reference.get("edges") or []]
            ref_counts = np.asarray(reference.get("counts") or [0] * (len(self.edges) + 1), dtype=np.float64)
            present = ref_counts.sum()
            missing = float(reference.get("missing") or 0.0)
            # the reference's missing values, as a count on the same footing as its binned ones
            ref_missing = present * missing / (1 - missing) if missing < 1 else float(rows)
            self.reference = np.append(ref_counts, ref_missing)
            self.counts = np.zeros(len(self.reference), dtype=np.int64)
            self._last = len(self.edges) - 1
        else:
            self.values = [str(v) for v in reference.get("frequencies", {})]
            self.index = {v: i for i, v in enumerate(self.values)}
            shares = [float(reference["frequencies"][v]) for v in reference.get("frequencies", {})]
            # values outside the reference go to 'other' (its reference share is 0), then missing
            self.reference = np.asarray(shares + [0.0, float(reference.get("missing") or 0.0)]) * max(rows, 1)
            self.counts = np.zeros(len(self.reference), dtype=np.int64)

    def add(self, value: Any) -> None:
        """One live value (None or NaN: missing; a category as its text)."""
        self.n += 1
        if self.kind == "numeric":
            if value is None or value != value or not self.edges:
                self.counts[-1] += 1
                return
            i = bisect_right(self.edges, value)
            if i == len(self.edges) and value == self.edges[-1]:
                i = self._last
            self.counts[i] += 1
        elif value is None:
            self.counts[-1] += 1
        else:
            self.counts[self.index.get(value, len(self.values))] += 1

    def add_many(self, values: np.ndarray) -> None:
        """A column of live numbers at once (NaN: missing), as add() one by one."""
        values = np.asarray(values, dtype=np.float64)
        self.n += len(values)
        missing = int(np.isnan(values).sum())
        self.counts[-1] += missing
        if not self.edges:
            self.counts[-1] += len(values) - missing
            return
        self.counts[:-1] += bin_counts(self.edges, values)

    def statistics(self) -> dict[str, float]:
        """PSI over every bin (missing included) and the type's two-sample test."""
        out = {"psi": psi(self.reference, self.counts.astype(np.float64))}
        if self.kind == "numeric":
            ref, cur = self.reference[:-1], self.counts[:-1].astype(np.float64)
            out["ks"], out["ks_pvalue"] = ks_binned(ref, cur, ref.sum(), cur.sum())
        else:
            out["chi2"], out["chi2_pvalue"] = chi2_binned(self.reference, self.counts.astype(np.float64))
        return out

    def reset(self) -> None:
        self.counts[:] = 0
        self.n = 0


def watched_statistic(drift: DriftSpec, kind: str) -> tuple[str, bool]:
    """The statistic an alert compares with the spec's threshold, and whether higher is worse."""
    if drift.method == "psi":
        return "psi", True
    return ("ks_pvalue" if kind == "numeric" else "chi2_pvalue"), False


class InputWindows:
    """Tumbling windows of a model version's inputs (every input its reference describes) and of its
    scores, over the predictions it made; a window closes every `window_size` predictions."""

    def __init__(self, reference: dict[str, Any], inputs: Sequence[str], window_size: int):
        self.window_size = window_size
        rows = int(reference.get("rows") or 0)
        self.features = {name: Sketch(name, ref, rows) for name, ref in (reference.get("features") or {}).items()}
        # how to read each input from a prediction's vector: a category field is one-hot ('field=value')
        self.readers: list[tuple[Sketch, Callable[[dict[str, Any]], Any]]] = []
        for name, sketch in self.features.items():
            if sketch.kind == "numeric":
                self.readers.append((sketch, _numeric_reader(name)))
            elif name in inputs:  # a bool input: 0/1
                self.readers.append((sketch, _bool_reader(name)))
            else:
                columns = [(f"{name}={v}", v) for v in sketch.values]
                self.readers.append((sketch, _onehot_reader(columns)))
        scores = reference.get("scores") or {}
        self.scores = Sketch("score", {"kind": "numeric", "edges": scores.get("edges") or [],
                                       "counts": scores.get("counts") or [], "missing": 0.0},
                             int(reference.get("holdout_rows") or 0)) if scores.get("edges") else None
        self.n = 0

    def add(self, vector: dict[str, Any], score: float) -> bool:
        """One prediction's inputs and score; True when this one closed the window."""
        for sketch, read in self.readers:
            sketch.add(read(vector))
        if self.scores is not None:
            self.scores.add(score)
        self.n += 1
        return self.n >= self.window_size

    def close(self) -> tuple[dict[str, dict[str, float]], dict[str, float] | None]:
        """The window's statistics per input and of the scores; the window starts again empty."""
        features = {name: s.statistics() for name, s in self.features.items()}
        scores = self.scores.statistics() if self.scores is not None else None
        for s in self.features.values():
            s.reset()
        if self.scores is not None:
            self.scores.reset()
        self.n = 0
        return features, scores


def _numeric_reader(name: str) -> Callable[[dict[str, Any]], Any]:
    return lambda vector: vector.get(name)


def _bool_reader(name: str) -> Callable[[dict[str, Any]], Any]:
    def read(vector: dict[str, Any]) -> str | None:
        v = vector.get(name)
        return None if v is None or v != v else ("true" if v else "false")
    return read


def _onehot_reader(columns: list[tuple[str, str]]) -> Callable[[dict[str, Any]], Any]:
    def read(vector: dict[str, Any]) -> str | None:
        for column, value in columns:
            if vector.get(column) == 1.0:
                return value
        return None  # no listed value: missing, as the reference counts it
    return read


# ---------------------------------------------------------------- concept drift

def make_detector(spec: PipelineSpec) -> Any:
    """The spec's river drift detector (monitoring.concept_drift)."""
    from river import drift

    c = spec.monitoring.concept_drift
    if c.detector == "adwin":
        return drift.ADWIN(delta=c.delta)
    if c.detector == "page_hinkley":
        return drift.PageHinkley(delta=c.delta)
    return drift.KSWIN(alpha=c.delta, seed=42)


def error_of(spec: PipelineSpec, predicted: Any, label: Any) -> float:
    """The error stream's value for one labelled prediction: 0/1 for a class, |error| for a number."""
    if spec.label.type == "regression":
        return abs(float(predicted) - float(label))
    if spec.label.type == "binary":
        return float(int(bool(predicted)) != int(label))
    return float(str(predicted) != str(label))


# ---------------------------------------------------------------- live performance and bias

@dataclass
class Labelled:
    """A prediction joined with its label (encoded as the trainer encodes it)."""

    score: float
    predicted: Any
    proba: dict[str, float] | None
    label: Any
    segments: dict[str, str | None] = field(default_factory=dict)


def predictions_of(spec: PipelineSpec, rows: Sequence[Labelled]) -> tuple[list[Any], Predictions]:
    """Encoded labels and a shared.modeling.Predictions for the trainer's holdout metrics."""
    task = spec.label.type
    scores = np.asarray([r.score for r in rows], dtype=np.float64)
    if task == "binary":
        labels = np.asarray([int(bool(r.predicted)) for r in rows])
        return [r.label for r in rows], Predictions(scores, labels)
    if task == "regression":
        return [r.label for r in rows], Predictions(scores, scores)
    classes = list(spec.label.classes or ())
    proba = np.asarray([[float((r.proba or {}).get(c, 0.0)) for c in classes] for r in rows], dtype=np.float64)
    return [r.label for r in rows], Predictions(scores, np.asarray([str(r.predicted) for r in rows], dtype=object),
                                                proba, classes)


class RollingPerformance:
    """The spec's metrics (the trainer's holdout definitions) over the last `size` labelled
    predictions of one model version and variant, recomputed every `every` new ones."""

    def __init__(self, spec: PipelineSpec, size: int, every: int | None = None):
        self.spec, self.rows = spec, deque(maxlen=size)
        self.every = every or max(1, size // 10)
        self.since = 0
        self.values: dict[str, float] = {}

    def add(self, row: Labelled) -> dict[str, float] | None:
        """Add one; the fresh metrics when they were recomputed (only once the window is full)."""
        self.rows.append(row)
        self.since += 1
        if len(self.rows) < self.rows.maxlen or self.since < self.every:
            return None
        self.since = 0
        y, p = predictions_of(self.spec, list(self.rows))
        self.values = holdout_metrics(self.spec, y, p)
        return self.values


@dataclass
class SegmentCounts:
    n: int = 0
    positive: int = 0  # binary: predicted positive
    errors: float = 0.0  # binary/multiclass: wrong; regression: sum of |error|
    negatives: int = 0  # binary: label 0 ...
    false_positives: int = 0  # ... predicted 1
    positives: int = 0  # binary: label 1 ...
    false_negatives: int = 0  # ... predicted 0


def segment_rates(task: str, c: SegmentCounts) -> dict[str, float]:
    """A segment's rates: positive rate and error rates (binary: false positive and false negative
    rates; multiclass: error rate; regression: mean absolute error)."""
    if task == "binary":
        out = {"positive_rate": c.positive / c.n}
        if c.negatives:
            out["false_positive_rate"] = c.false_positives / c.negatives
        if c.positives:
            out["false_negative_rate"] = c.false_negatives / c.positives
        return out
    if task == "multiclass":
        return {"error_rate": c.errors / c.n}
    return {"mean_absolute_error": c.errors / c.n}


class BiasWindow:
    """Tumbling windows of labelled predictions, counted per value of each segment field."""

    def __init__(self, spec: PipelineSpec):
        self.spec, self.size = spec, spec.monitoring.performance_window
        self.counts: dict[tuple[str, str], SegmentCounts] = {}
        self.n = 0

    def add(self, row: Labelled) -> bool:
        """One labelled prediction; True when it closed the window."""
        task = self.spec.label.type
        err = error_of(self.spec, row.predicted, row.label)
        for name, value in row.segments.items():
            c = self.counts.setdefault((name, MISSING if value is None else str(value)), SegmentCounts())
            c.n += 1
            c.errors += err
            if task == "binary":
                predicted, actual = int(bool(row.predicted)), int(row.label)
                c.positive += predicted
                if actual:
                    c.positives += 1
                    c.false_negatives += 1 - predicted
                else:
                    c.negatives += 1
                    c.false_positives += predicted
        self.n += 1
        return self.n >= self.size

    def close(self) -> list[BiasFinding]:
        """Each judged segment's statistics against the best segment of its field; the window restarts."""
        m = self.spec.monitoring
        low, high = m.bias_bounds
        task = self.spec.label.type
        by_field: dict[str, dict[str, dict[str, float]]] = {}
        for (name, value), c in self.counts.items():
            if c.n >= m.min_segment_size:
                by_field.setdefault(name, {})[value] = segment_rates(task, c)
        findings = []
        for name, segments in by_field.items():
            if len(segments) < 2:
                continue
            for rate in {r for rates in segments.values() for r in rates}:
                present = {v: rates[rate] for v, rates in segments.items() if rate in rates}
                if len(present) < 2:
                    continue
                if rate == "positive_rate":  # selection: the best is the highest; a ratio below `low` is unfair
                    best = max(present.values())
                    for value, r in present.items():
                        ratio = r / best if best > 0 else 1.0
                        findings.append(BiasFinding(name, value, f"{rate}_ratio", ratio, low, False, segments[value]))
                else:  # an error: the best is the lowest; above `high` times it, or more than the gap above
                    best = min(present.values())
                    for value, r in present.items():
                        if best > 0:  # against a segment without any error a ratio says nothing: the gap does
                            findings.append(BiasFinding(name, value, f"{rate}_ratio", r / best, high, True,
                                                        segments[value]))
                        if task != "regression":
                            findings.append(BiasFinding(name, value, f"{rate}_gap", r - best, m.max_segment_gap,
                                                        True, segments[value]))
        self.counts.clear()
        self.n = 0
        return findings


@dataclass
class BiasFinding:
    field: str
    value: str
    statistic: str
    measured: float
    threshold: float
    higher_is_worse: bool
    rates: dict[str, float]


# ---------------------------------------------------------------- training/serving skew

def skew(served: dict[str, Any], snapshot: dict[str, Any], tolerance: float) -> list[str]:
    """The features whose served value differs from the feature service's snapshot for the same
    event (beyond tolerance relative to max(1, |snapshot|); missing on one side only differs)."""
    differ = []
    for name, expected in snapshot.items():
        if name not in served:
            continue
        got = served[name]
        missing_got = got is None or got != got
        missing_expected = expected is None or expected != expected
        if missing_got or missing_expected:
            if missing_got != missing_expected:
                differ.append(name)
        elif abs(float(got) - float(expected)) > tolerance * max(1.0, abs(float(expected))):
            differ.append(name)
    return differ


# ---------------------------------------------------------------- alerts with hysteresis

def fingerprint(*parts: Any) -> str:
    """The stable dedup key of what an alert watches."""
    text = ":".join("" if p is None else str(p) for p in parts)
    return text if len(text) <= 200 else hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Watch:
    """What one statistic is compared with: fires past `threshold` (above it, or below it for a
    lower-is-worse value), resolves only back past
    threshold × hysteresis (for a p-value: threshold / hysteresis; for a metric minimum m: m + (1 - m)
    × (1 - hysteresis)), so a value hovering at the threshold does not flap."""

    kind: str
    subject: str
    statistic: str
    threshold: float
    higher_is_worse: bool
    model_name: str | None = None
    model_version: int | None = None


class AlertBook:
    """Alert states by fingerprint; `observe` returns a record only when one starts firing, escalates
    to critical or resolves (the repeats of a firing alert are grouped into its `details.windows`)."""

    def __init__(self, hysteresis: float):
        self.hysteresis = hysteresis
        self.firing: dict[str, Alert] = {}

    def restore(self, alerts: Iterable[Alert]) -> None:
        """The latest record per fingerprint (from the compacted `alerts` topic): firing ones resume."""
        for alert in alerts:
            if alert.status == "firing":
                self.firing[alert.fingerprint] = alert
            else:
                self.firing.pop(alert.fingerprint, None)

    def breached(self, w: Watch, value: float) -> bool:
        return value > w.threshold if w.higher_is_worse else value < w.threshold

    def recovered(self, w: Watch, value: float) -> bool:
        if w.higher_is_worse:
            return value <= w.threshold * self.hysteresis
        if w.statistic.endswith("pvalue"):
            return value >= w.threshold / self.hysteresis
        # a metric that must stay at or above a minimum (they all top out at 1: roc_auc, accuracy, r2, ...):
        # back above it by the same share of the way to perfect
        return value >= w.threshold + (1 - w.threshold) * (1 - self.hysteresis)

    def severity(self, w: Watch, value: float) -> str:
        if w.higher_is_worse:
            critical = w.threshold > 0 and value >= 2 * w.threshold
        elif w.statistic.endswith("pvalue"):
            critical = value < w.threshold / 100
        else:
            critical = value < w.threshold - (1 - w.threshold)
        return "critical" if critical else "warning"

    def observe(self, w: Watch, value: float, *, window: int, now: datetime,
                details: dict[str, Any] | None = None) -> Alert | None:
        key = fingerprint(w.kind, w.subject, w.statistic)
        current = self.firing.get(key)
        if value != value:  # NaN: nothing to judge
            return None
        if math.isinf(value):  # e.g. a segment's error ratio to a best segment without errors: an Alert's
            value = math.copysign(sys.float_info.max, value)  # value must be finite, so the largest float
        if current is None:
            if not self.breached(w, value):
                return None
            alert = Alert(fingerprint=key, kind=w.kind, status="firing", severity=self.severity(w, value),
                          subject=w.subject, statistic=w.statistic, value=value, threshold=w.threshold,
                          window=window, model_name=w.model_name, model_version=w.model_version,
                          started_at=now, updated_at=now, details={**(details or {}), "windows": 1})
            self.firing[key] = alert
            return alert
        if self.recovered(w, value):
            del self.firing[key]
            return current.model_copy(update={"status": "resolved", "value": value, "window": window,
                                              "updated_at": now, "details": {**current.details, **(details or {})}})
        # severity only escalates while firing: a value swinging around 2x the threshold is not re-sent
        severity = "critical" if "critical" in (current.severity, self.severity(w, value)) else current.severity
        windows = int(current.details.get("windows", 1)) + 1
        updated = current.model_copy(update={"value": value, "window": window, "severity": severity,
                                             "model_name": w.model_name, "model_version": w.model_version,
                                             "details": {**current.details, **(details or {}), "windows": windows}})
        self.firing[key] = updated
        if severity != current.severity:
            return updated.model_copy(update={"updated_at": now})
        return None

    def resolve(self, key: str, *, now: datetime, reason: str) -> Alert | None:
        """Resolve a firing alert whatever its value (e.g. the detector has been quiet for a window)."""
        current = self.firing.pop(key, None)
        if current is None:
            return None
        return current.model_copy(update={"status": "resolved", "updated_at": now,
                                          "details": {**current.details, "resolved_because": reason}})


def label_of(spec: PipelineSpec, value: Any) -> Any:
    """The label as the trainer encodes it (binary 0/1, multiclass class name, regression float)."""
    return encode_label(spec, value)


def metric_watch(spec: PipelineSpec, variant: str, metric: str, model_name: str, version: int) -> Watch | None:
    """The performance watch of one variant's primary metric (None without a minimum in the spec)."""
    if spec.metrics.minimum is None:
        return None
    return Watch("performance", variant, metric, spec.metrics.minimum, not higher_is_better(metric),
                 model_name, version)
