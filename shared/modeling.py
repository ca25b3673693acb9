"""Models from the pipeline spec: one input encoding for training and serving, model construction,
predictions, metrics and the reference statistics the monitor compares live traffic with.

Everything here is pure (no I/O); shared.registry stores and loads what it builds.
"""
from __future__ import annotations

import importlib
import inspect
import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from shared.errors import SpecError
from shared.serialization import parse_time, to_utc
from shared.spec import ALGORITHMS, METRICS, ModelCandidate, PipelineSpec, number_text

__all__ = ["Predictions", "PrequentialMetrics", "SEED", "Vectorizer", "beats", "bin_counts", "build_model",
           "constructor_params", "data_statistics", "DropEmptyColumns", "encode_label", "higher_is_better",
           "holdout_metrics", "meets_minimum", "model_classes", "predict", "predict_one_river", "quantile_edges",
           "reference_statistics", "score_statistics"]

SEED = 42  # random_state / seed of every estimator whose params do not set one: reruns give the same model
_NAN = float("nan")
# Unscaled inputs slow linear and Gaussian models down or skew them; trees split on raw values.
_SCALED = {
    "river": {"logistic_regression", "linear_regression", "naive_bayes"},
    "sklearn": {"logistic_regression", "ridge"},
}
_SEED_PARAM = {"river": "seed", "sklearn": "random_state"}


# ---------------------------------------------------------------- input encoding

class Vectorizer:
    """The model inputs of a spec: one encoding for training (trainer) and serving, river and sklearn.

    Columns, in this order:

    1. every spec feature (``features.definitions``, in spec order), named as the feature: its value
       as float; None or absent -> NaN.
    2. the event's own fields usable as inputs, in the order of ``event.fields``:
       - int and float fields: the value as float; absent or None -> NaN.
       - bool fields: 1.0 / 0.0; absent -> NaN.
       - category fields: one-hot, one column per value of the spec, named ``f"{field}={value}"``:
         1.0 in the value's column, 0.0 elsewhere; a missing or unknown value -> all 0.0.
         (A number is matched by its canonical text, as ingest does: 1 and 1.0 match "1".)
       - timestamp fields other than the spec's time field: epoch seconds (UTC; naive = UTC);
         absent -> NaN.
       - never the entity key, the time field (features already encode time) or string fields
         (free text has no numeric meaning here).

    ``row`` gives the float64 vector scikit-learn models take; ``river_x`` gives the same values as
    a dict keyed by column name, without the missing (NaN) ones, which is how river expects
    missing values; so river and sklearn models see the same numbers. ``data`` is an event's
    validated fields (``Event.data``), as the wire has them: category values as text, timestamps as
    RFC 3339 text (datetimes are accepted too).
    """

    def __init__(self, spec: PipelineSpec):
        self.spec = spec
        columns: list[str] = []
        self._features: list[tuple[int, str]] = []
        for feat in spec.features.definitions:
            self._features.append((len(columns), feat.name))
            columns.append(feat.name)
        skip = {spec.event.time_field, spec.entity.key if spec.entity else None}
        self._numbers: list[tuple[int, str]] = []  # int, float and bool fields: float(value)
        self._times: list[tuple[int, str]] = []
        self._categories: list[tuple[str, dict[str, int]]] = []
        #: category field -> [(value, column index)], to group one-hot columns back (reference statistics)
        self.groups: dict[str, list[tuple[str, int]]] = {}
        #: indexes of the columns that come from bool fields (0/1)
        self.bools: set[int] = set()
        for name, field in spec.event.fields.items():
            if name in skip or field.type == "string":
                continue
            if field.type == "category":
                index = {value: len(columns) + i for i, value in enumerate(field.values or ())}
                self._categories.append((name, index))
                self.groups[name] = list(index.items())
                columns += [f"{name}={value}" for value in field.values or ()]
                continue
            if field.type == "bool":
                self.bools.add(len(columns))
            (self._times if field.type == "timestamp" else self._numbers).append((len(columns), name))
            columns.append(name)
        self.columns: list[str] = columns
        self._template: list[Any] = [0.0] * len(columns)  # one-hot columns stay 0.0 unless set

    def values(self, features: dict[str, Any], data: dict[str, Any]) -> list[Any]:
        """One example's inputs as Python values in column order: None = missing, else int, float or bool."""
        # Kept as one flat loop per kind: this runs per serving request (shared.scoring reads it directly).
        out = self._template[:]
        get = features.get
        for i, name in self._features:
            out[i] = get(name)
        get = data.get
        for i, name in self._numbers:
            out[i] = get(name)
        for i, name in self._times:
            value = get(name)
            if value is not None:
                out[i] = (parse_time(value) if isinstance(value, str) else to_utc(value)).timestamp()
            else:
                out[i] = None
        for name, index in self._categories:
            value = get(name)
            if value is None:
                continue
            i = index.get(value)
            if i is None and type(value) in (int, float):
                i = index.get(number_text(value))
            if i is not None:
                out[i] = 1.0
        return out

    def row(self, features: dict[str, Any], data: dict[str, Any]) -> np.ndarray:
        """One example's inputs as a float64 vector (missing = NaN)."""
        return np.array(self.values(features, data), dtype=np.float64)  # None -> NaN

    def matrix(self, rows: Iterable[tuple[dict[str, Any], dict[str, Any]]]) -> np.ndarray:
        """Many examples' inputs, one row per (features, data) pair: a 2-D float64 array."""
        values = [self.values(features, data) for features, data in rows]
        return np.array(values, dtype=np.float64).reshape(len(values), len(self.columns))

    def river_x(self, features: dict[str, Any], data: dict[str, Any]) -> dict[str, float]:
        """The same values as `row`, keyed by column name, without the missing ones (river's way)."""
        values = self.values(features, data)
        return {c: float(v) for c, v in zip(self.columns, values) if v is not None and v == v}


def encode_label(spec: PipelineSpec, value: Any) -> int | str | float:
    """A label as the models learn it: binary -> 0/1, multiclass -> class name, regression -> float.

    Ingest has already turned named binary outcomes into booleans (the second class is true); a
    class name or 0/1 is accepted here too, for data that did not pass through ingest."""
    label = spec.label
    if label.type == "binary":
        if isinstance(value, str) and label.classes and value in label.classes:
            return int(value == label.classes[1])
        if isinstance(value, (bool, int)) and value in (0, 1):
            return int(value)
        raise ValueError(f"a binary label must be true/false or 0/1, not {value!r}")
    if label.type == "multiclass":
        text = number_text(value) if type(value) in (int, float) else value
        if isinstance(text, str) and text in (label.classes or ()):
            return text
        raise ValueError(f"a multiclass label must be one of {label.classes}, not {value!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    raise ValueError(f"a regression label must be a finite number, not {value!r}")


# ---------------------------------------------------------------- models

def _import(path: str) -> type:
    module, name = path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def _estimator_class(candidate: ModelCandidate, spec: PipelineSpec) -> type:
    path = ALGORITHMS[candidate.library][candidate.algorithm].get(spec.label.type)
    if path is None:  # the spec check refuses this; a hand-made candidate might not have passed it
        reason = f"'{candidate.algorithm}' does not fit a {spec.label.type} label"
        raise SpecError(f"model '{candidate.name}': {reason}")
    return _import(path)


def constructor_params(candidate: ModelCandidate, spec: PipelineSpec) -> dict[str, Any]:
    """The parameters `build_model` passes to the estimator: the candidate's, plus a seed if it takes one."""
    params = dict(candidate.params)
    seed = _SEED_PARAM[candidate.library]
    if seed not in params and seed in inspect.signature(_estimator_class(candidate, spec)).parameters:
        params[seed] = SEED
    return params


def build_model(candidate: ModelCandidate, spec: PipelineSpec) -> Any:
    """A fresh, unfitted model for a spec candidate (see the module's _SCALED for what gets scaled).

    river: ``StandardScaler | estimator`` for linear and naive Bayes models, else the estimator.
    sklearn: ``Pipeline(SimpleImputer(median), StandardScaler, estimator)`` for linear models (a
    column that was all missing in training is imputed as 0, which the scaler keeps 0);
    ``Pipeline(DropEmptyColumns, estimator)`` for hist_gradient_boosting; the random forest alone.
    The tree ensembles take NaN as it is. Raises SpecError for bad params."""
    cls = _estimator_class(candidate, spec)
    try:
        estimator = cls(**constructor_params(candidate, spec))
    except (TypeError, ValueError) as exc:
        raise SpecError(f"model '{candidate.name}': bad params for {cls.__name__}: {exc}") from None
    if candidate.library == "sklearn" and candidate.algorithm == "hist_gradient_boosting":
        from sklearn.pipeline import Pipeline

        return Pipeline([("drop_empty", DropEmptyColumns()), ("model", estimator)])
    if candidate.algorithm not in _SCALED[candidate.library]:
        return estimator
    if candidate.library == "river":
        from river import compose, preprocessing

        return compose.Pipeline(preprocessing.StandardScaler(), estimator)
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    imputer = SimpleImputer(strategy="median", keep_empty_features=True)
    return Pipeline([("impute", imputer), ("scale", StandardScaler()), ("model", estimator)])


class DropEmptyColumns(TransformerMixin, BaseEstimator):
    """Drops the columns that were all missing (NaN) when fitted; the others pass unchanged, NaN included.

    scikit-learn 1.9.1's HistGradientBoosting fails to fit ("window shape cannot be larger than input
    array shape") on a column without any value, which happens whenever an optional field or a
    feature is never present in a training set. VarianceThreshold would also drop a column that is
    constant where present, losing what its missingness says; this drops only the empty ones."""

    def fit(self, X: Any, y: Any = None) -> DropEmptyColumns:
        X = np.asarray(X, dtype=np.float64)
        self.keep_ = ~np.isnan(X).all(axis=0)
        self.n_features_in_ = X.shape[1]
        return self

    def transform(self, X: Any) -> np.ndarray:
        return np.asarray(X, dtype=np.float64)[:, self.keep_]


@dataclass(frozen=True)
class Predictions:
    """A model's outputs for n examples.

    scores: binary -> P(positive); multiclass -> the largest class probability; regression -> the
    prediction. labels: binary -> 0/1 (P(positive) >= 0.5); multiclass -> class names; regression ->
    the prediction. proba (multiclass only): n x len(classes) probabilities, columns in `classes` order.
    """

    scores: np.ndarray
    labels: np.ndarray
    proba: np.ndarray | None = None
    classes: list[str] | None = None

    def __len__(self) -> int:
        return len(self.scores)


def model_classes(spec: PipelineSpec) -> list[str] | None:
    """The `classes` a ModelVersion records: multiclass -> the spec's classes (the proba column order
    `predict(..., classes=...)` uses); binary -> [negative, positive] names (label 0, label 1);
    regression -> None."""
    label = spec.label
    if label.type == "regression":
        return None
    if label.type == "binary":
        return list(label.classes) if label.classes else ["false", "true"]
    return list(label.classes or ())


def predict_one_river(model: Any, task: str, x: dict[str, float]) -> tuple[float, Any, dict[Any, float]]:
    """(score, label, proba) of one example for a river model, as `Predictions` defines them.

    proba: binary -> {0: 1 - score, 1: score}; multiclass -> the model's {class: probability};
    regression -> {}. A classifier that has learnt nothing yet says score 0.5 (binary) or label None
    with score 0.0 (multiclass)."""
    if task == "regression":
        y = float(model.predict_one(x))
        return y, y, {}
    proba = model.predict_proba_one(x)
    if task == "binary":
        # river keeps the labels it learnt (0/1 here, True/False for some linear models): True == 1.
        score = float(proba.get(1, 0.0)) if proba else 0.5
        return score, int(score >= 0.5), {0: 1.0 - score, 1: score}
    if not proba:
        return 0.0, None, {}
    label = max(proba, key=proba.get)
    return float(proba[label]), label, dict(proba)


def _align(proba: np.ndarray, have: Sequence[str], want: Sequence[str]) -> np.ndarray:
    """Probability columns reordered from `have` to `want`; a class the model never saw gets 0."""
    out = np.zeros((proba.shape[0], len(want)))
    where = {c: i for i, c in enumerate(have)}
    for j, c in enumerate(want):
        if c in where:
            out[:, j] = proba[:, where[c]]
    return out


def predict(model: Any, library: str, task: str, X: Any, classes: Sequence[str] | None = None) -> Predictions:
    """Predictions of a fitted model: X is a 2-D matrix (sklearn) or a list of `river_x` dicts (river).

    For multiclass, `classes` fixes the proba column order (pass `model_classes(spec)`); without it
    the model's own order is used (sklearn's classes_, or the sorted classes river returned)."""
    n = len(X)
    if library == "river":
        outs = [predict_one_river(model, task, x) for x in X]
        scores = np.array([o[0] for o in outs], dtype=np.float64)
        if task == "regression":
            return Predictions(scores, scores.copy())
        if task == "binary":
            return Predictions(scores, np.array([o[1] for o in outs], dtype=np.int64))
        have = sorted({c for o in outs for c in o[2]})
        want = list(classes) if classes is not None else have
        proba = np.array([[o[2].get(c, 0.0) for c in have] for o in outs], dtype=np.float64)
        proba = proba.reshape(n, len(have))
        # a model that has learnt nothing yet names no class: say the first one, so labels stay class names
        fallback = want[0] if want else None
        labels = np.array([fallback if o[1] is None else o[1] for o in outs], dtype=object)
        return Predictions(scores, labels, _align(proba, have, want), want)
    if n == 0:  # scikit-learn refuses an empty matrix
        want = list(classes or ()) if task == "multiclass" else None
        empty = np.zeros(0)
        kind = {"multiclass": object, "regression": np.float64}.get(task, np.int64)
        labels = np.zeros(0, dtype=kind)
        return Predictions(empty, labels, np.zeros((0, len(want))) if want is not None else None, want)
    if task == "regression":
        y = np.asarray(model.predict(X), dtype=np.float64)
        return Predictions(y, y.copy())
    proba = np.asarray(model.predict_proba(X), dtype=np.float64)
    have_raw = list(model.classes_)
    if task == "binary":
        pos = [i for i, c in enumerate(have_raw) if c == 1]
        scores = proba[:, pos[0]] if pos else np.zeros(n)  # trained on negatives only: P(positive) = 0
        return Predictions(scores, (scores >= 0.5).astype(np.int64))
    have = [str(c) for c in have_raw]
    want = list(classes) if classes is not None else have
    aligned = _align(proba, have, want)
    best = aligned.argmax(axis=1)
    return Predictions(aligned[np.arange(n), best], np.array(want, dtype=object)[best], aligned, want)


# ---------------------------------------------------------------- metrics

def higher_is_better(name: str) -> bool:
    """Whether a larger value of the metric is better (False for the losses)."""
    return METRICS[name][1]


def meets_minimum(spec: PipelineSpec, value: float) -> bool:
    """Whether the primary metric's value reaches the spec's bound (an upper bound for losses)."""
    bound = spec.metrics.minimum
    if bound is None:
        return True
    return value >= bound if higher_is_better(spec.metrics.primary) else value <= bound


def beats(spec: PipelineSpec, challenger: float, champion: float | None) -> bool:
    """Whether the challenger's primary metric improves on the champion's by at least the spec's margin.

    The improvement must also be positive, so with margin 0 a tie keeps the champion. Without a
    champion (None) any challenger beats it. A tiny tolerance absorbs float rounding of the difference
    (0.805 - 0.8 is 0.00500000000000004, 0.755 - 0.75 could as well be 0.0049999...)."""
    if champion is None:
        return True
    gain = challenger - champion if higher_is_better(spec.metrics.primary) else champion - challenger
    return gain > 0 and gain >= spec.metrics.margin - 1e-12


def _metric_names(spec: PipelineSpec) -> list[str]:
    return list(dict.fromkeys([spec.metrics.primary, *spec.metrics.report]))


def _normalized(proba: np.ndarray) -> np.ndarray:
    # log_loss needs rows summing to 1; river's probabilities may not, and a class missing from
    # the model leaves a row short. A row with no mass at all says nothing: uniform.
    sums = proba.sum(axis=1, keepdims=True)
    uniform = np.full_like(proba, 1.0 / max(proba.shape[1], 1))
    return np.where(sums > 0, proba / np.where(sums > 0, sums, 1.0), uniform)


def _holdout_metric(name: str, spec: PipelineSpec, y: np.ndarray, p: Predictions) -> float:
    from sklearn import metrics as m

    two_classes = spec.label.type != "binary" or len(np.unique(y)) == 2
    match name:
        case "roc_auc" | "pr_auc" if not two_classes:
            return _NAN  # a ranking metric needs both classes
        case "roc_auc":
            return m.roc_auc_score(y, p.scores)
        case "pr_auc":
            return m.average_precision_score(y, p.scores)
        case "log_loss" if spec.label.type == "binary":
            return m.log_loss(y, p.scores, labels=[0, 1])
        case "log_loss":
            # log_loss takes the probability columns in sorted label order, whatever `labels` says.
            classes = sorted(spec.label.classes or ())
            return m.log_loss(y, _normalized(_align(p.proba, p.classes, classes)), labels=classes)
        case "accuracy":
            return m.accuracy_score(y, p.labels)
        case "f1":  # zero_division NaN: undefined (no positives predicted nor true) is left out
            return m.f1_score(y, p.labels, pos_label=1, zero_division=np.nan)
        case "precision":
            return m.precision_score(y, p.labels, pos_label=1, zero_division=np.nan)
        case "recall":
            return m.recall_score(y, p.labels, pos_label=1, zero_division=np.nan)
        case "macro_f1":
            return m.f1_score(y, p.labels, average="macro")
        case "mae":
            return m.mean_absolute_error(y, p.scores)
        case "rmse":
            return m.root_mean_squared_error(y, p.scores)
        case "r2":
            return m.r2_score(y, p.scores)
    raise KeyError(name)


def holdout_metrics(spec: PipelineSpec, y_true: Sequence[Any], predictions: Predictions) -> dict[str, float]:
    """The spec's primary and report metrics on a holdout, computed with scikit-learn.

    y_true holds encoded labels (`encode_label`). f1, precision and recall count label 1 as positive
    at the 0.5 threshold on P(positive). A metric that cannot be computed on these examples (ROC AUC
    with one class, precision with no positive prediction, any metric of an empty holdout) is left
    out rather than reported as NaN."""
    y = np.asarray(y_true, dtype=object if spec.label.type == "multiclass" else None)
    out: dict[str, float] = {}
    if len(y) == 0:
        return out
    names = _metric_names(spec)
    computed = binary_metrics(y, predictions, names) if spec.label.type == "binary" else {}
    for name in names:
        if name in computed:
            value = computed[name]
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # undefined-metric warnings: the NaN is dropped below
                try:
                    value = float(_holdout_metric(name, spec, y, predictions))
                except (ValueError, TypeError):  # e.g. pos_label=1 that neither array holds
                    continue
        if math.isfinite(value):
            out[name] = value
    return out


BINARY_METRICS = frozenset({"roc_auc", "pr_auc", "log_loss", "accuracy", "f1", "precision", "recall"})


def binary_metrics(y_true: np.ndarray, p: Predictions, names: Sequence[str]) -> dict[str, float]:
    """The binary metrics among `names` (BINARY_METRICS) in numpy; NaN where undefined (one class
    only for the curves, no predicted or no true positive for precision, recall, f1).

    The values scikit-learn's functions give (tests/unit/test_modeling.py compares them on random
    and edge cases; they differ in the last bits at most): the same curve from the same stable sort,
    the same clipping for log_loss. scikit-learn checks its inputs on every call (the label set is
    hashed several times), which on a 20,000-row holdout costs 3-5 ms per metric, more than the
    metric itself; here the label array is checked once."""
    y = np.asarray(y_true)
    if not np.isin(y, (0, 1)).all():
        raise ValueError("binary labels must be encoded 0/1")
    y = y.astype(bool)
    out: dict[str, float] = {}
    wanted = set(names) & BINARY_METRICS
    n, positives = len(y), int(y.sum())
    if wanted & {"roc_auc", "pr_auc"}:
        if 0 < positives < n:
            scores = np.asarray(p.scores, dtype=np.float64)
            order = np.argsort(scores, kind="mergesort")[::-1]  # as sklearn's _binary_clf_curve
            ends = np.r_[np.flatnonzero(np.diff(scores[order])), n - 1]  # the last row of each distinct score
            tps = np.cumsum(y[order], dtype=np.float64)[ends]
            fps = 1 + ends - tps
            if "roc_auc" in wanted:
                out["roc_auc"] = float(np.trapezoid(np.r_[0.0, tps / tps[-1]], np.r_[0.0, fps / fps[-1]]))
            if "pr_auc" in wanted:  # average precision: sum of (R_k - R_k-1) * P_k, summed in sklearn's order
                out["pr_auc"] = float(np.sum((np.diff(np.r_[0.0, tps / tps[-1]]) * (tps / (tps + fps)))[::-1]))
        else:
            out.update(dict.fromkeys(wanted & {"roc_auc", "pr_auc"}, _NAN))
    if "log_loss" in wanted:
        eps = np.finfo(np.float64).eps
        scores = np.clip(np.asarray(p.scores, dtype=np.float64), eps, 1 - eps)
        out["log_loss"] = float(np.mean(-np.log(np.where(y, scores, 1 - scores))))
    if wanted & {"accuracy", "f1", "precision", "recall"}:
        predicted = np.asarray(p.labels).astype(bool)
        tp = int(np.count_nonzero(predicted & y))
        predicted_positive = int(np.count_nonzero(predicted))
        if "accuracy" in wanted:
            out["accuracy"] = float(np.count_nonzero(predicted == y)) / n
        if "precision" in wanted:
            out["precision"] = tp / predicted_positive if predicted_positive else _NAN
        if "recall" in wanted:
            out["recall"] = tp / positives if positives else _NAN
        if "f1" in wanted:
            denominator = predicted_positive + positives  # 2 tp + fp + fn
            out["f1"] = 2 * tp / denominator if denominator else _NAN
    return out


def _river_metric(name: str, task: str) -> Any:
    from river import metrics as rm

    match name:
        case "roc_auc":
            return rm.ROCAUC()  # river's is approximate: confusion matrices at 10 thresholds
        case "log_loss":
            return rm.LogLoss() if task == "binary" else rm.CrossEntropy()
        case "accuracy":
            return rm.Accuracy()
        case "f1":
            return rm.F1()
        case "precision":
            return rm.Precision()
        case "recall":
            return rm.Recall()
        case "macro_f1":
            return rm.MacroF1()
        case "mae":
            return rm.MAE()
        case "rmse":
            return rm.RMSE()
        case "r2":
            return rm.R2()
        case "pr_auc":
            # river has only RollingPRAUC (over a sliding window), not a cumulative average precision;
            # prequential evaluation reports no pr_auc rather than a different quantity under its name.
            return None
    raise KeyError(name)


# The river metrics that take a probability (P(True) or a {class: p} dict) rather than a label.
_TAKES_PROBA = {"roc_auc", "log_loss"}


class PrequentialMetrics:
    """Prequential (test-then-train) metrics of an online model: river metric objects for the spec's
    primary and report metrics (pr_auc excepted, see _river_metric), updated one example at a time.

    Feed each example before the model learns it: `update(y, *predict_one_river(model, task, x))`."""

    def __init__(self, spec: PipelineSpec):
        self.task = spec.label.type
        self.metrics = {name: metric for name in _metric_names(spec)
                        if (metric := _river_metric(name, self.task)) is not None}
        self.n = 0

    def update(self, y_true: Any, score: float, label: Any, proba: dict[Any, float] | None = None) -> None:
        """Count one example: its encoded label and the model's (score, label, proba) before learning it."""
        self.n += 1
        if self.task == "binary":  # river's binary metrics count True as the positive class
            y_true, label = bool(y_true), bool(label)
        for name, metric in self.metrics.items():
            if self.task == "regression":
                metric.update(y_true, score)
            elif name in _TAKES_PROBA:
                metric.update(y_true, score if self.task == "binary" else (proba or {}))
            else:
                metric.update(y_true, label)

    def values(self) -> dict[str, float]:
        """Metric name -> current value; empty before the first example, finite values only."""
        if not self.n:
            return {}
        out = {name: float(metric.get()) for name, metric in self.metrics.items()}
        return {name: value for name, value in out.items() if math.isfinite(value)}


# ---------------------------------------------------------------- reference statistics

DECILES = np.linspace(0.0, 1.0, 11)


def quantile_edges(values: np.ndarray) -> list[float]:
    """Bin edges of a numeric sample: its 0%, 10%, ..., 100% quantiles (numpy's linear interpolation),
    deduplicated; a constant sample gives [v, v]; no finite value gives []."""
    values = np.asarray(values, dtype=np.float64)
    return _edges_of_sorted(np.sort(values[np.isfinite(values)]))


def bin_counts(edges: Sequence[float], values: np.ndarray) -> list[int]:
    """How many finite values fall in each bin of `edges` (e_0 < ... < e_k, see `quantile_edges`).

    len(edges) + 1 counts: [0] below (x < e_0), [i] for 1 <= i < k the half-open bin
    e_{i-1} <= x < e_i, [k] the last bin closed on both sides e_{k-1} <= x <= e_k (so the largest
    training value is inside), [k+1] above (x > e_k). NaN is not counted (it is `missing`)."""
    values = np.asarray(values, dtype=np.float64)
    return _counts_of_sorted(edges, np.sort(values[~np.isnan(values)]))


def quantile_bins(values: np.ndarray) -> tuple[list[float], list[int]]:
    """`quantile_edges` of the values and their `bin_counts` over those edges, sorting them once."""
    values = np.asarray(values, dtype=np.float64)
    present = np.sort(values[~np.isnan(values)])  # -inf first, +inf last: the finite ones are a slice
    finite = present[np.searchsorted(present, -np.inf, "right"):np.searchsorted(present, np.inf, "left")]
    edges = _edges_of_sorted(finite)
    return edges, _counts_of_sorted(edges, present)


def _edges_of_sorted(values: np.ndarray) -> list[float]:
    if values.size == 0:
        return []
    # numpy's "linear" quantiles (np.quantile's default, same lerp) read off the sorted values
    at = (values.size - 1) * DECILES
    lo = np.floor(at).astype(np.intp)
    a, b, t = values[lo], values[np.minimum(lo + 1, values.size - 1)], at - lo
    edges = np.unique(np.where(t >= 0.5, b - (b - a) * (1 - t), a + (b - a) * t))
    if edges.size == 1:
        edges = np.repeat(edges, 2)
    return [float(e) for e in edges]


def _counts_of_sorted(edges: Sequence[float], values: np.ndarray) -> list[int]:
    if not len(edges):
        return []
    edges_a = np.asarray(edges, dtype=np.float64)
    starts = np.searchsorted(values, edges_a, side="left")  # each bin is a range of positions
    end = int(np.searchsorted(values, edges_a[-1], side="right"))  # past the last value <= the last edge
    return [int(c) for c in np.diff(np.concatenate(([0], starts[:-1], [end, values.size])))]


def _numeric_stats(values: np.ndarray) -> dict[str, Any]:
    values = np.asarray(values, dtype=np.float64)
    present = values[~np.isnan(values)]
    edges, counts = quantile_bins(present)
    return {
        "kind": "numeric",
        "edges": edges,
        "counts": counts,
        "missing": float(1.0 - present.size / values.size) if values.size else 0.0,
        "mean": float(present.mean()) if present.size else None,
        "std": float(present.std()) if present.size else None,
    }


def _shares(counts: dict[str, int], n: int) -> dict[str, float]:
    return {value: (count / n if n else 0.0) for value, count in counts.items()}


def reference_statistics(vectorizer: Vectorizer, X: np.ndarray, y: Sequence[Any],
                         predictions: Predictions) -> dict[str, Any]:
    """Reference statistics of a model version, the baseline the monitor compares live traffic with.

    X and y: the training inputs (`Vectorizer.matrix`) and encoded labels; predictions: the model's
    on the holdout. JSON-ready (Python floats and ints; None where a value does not exist)::

        {"rows": n, "holdout_rows": m,
         "features": {
             "<numeric column>": {"kind": "numeric", "edges": [...], "counts": [...], "missing": share,
                                  "mean": ..., "std": ... (population, ddof=0; None if all missing)},
             "<bool column>":    {"kind": "category", "frequencies": {"false": share, "true": share},
                                  "missing": share},
             "<category field>": {"kind": "category", "frequencies": {value: share, ...}, "missing": share}},
         "label": binary {"kind": "binary", "rate": share of 1} | multiclass {"kind": "category",
                  "frequencies": {class: share}} | regression {"kind": "numeric", edges, counts, mean, std},
         "scores": {"edges": [...], "counts": [...]}}

    Numeric edges and counts follow `quantile_edges` and `bin_counts` (deciles; bins closed on the
    left, the last also on the right; below/above counts first and last); the monitor bins live
    values with the same `bin_counts` against these edges. Shares are over all rows, so a
    category's frequencies plus its missing share sum to 1 ("missing" = no value or one the spec
    does not list: the one-hot columns are all 0)."""
    return {**data_statistics(vectorizer, X, y), **score_statistics(predictions)}


def data_statistics(vectorizer: Vectorizer, X: np.ndarray, y: Sequence[Any]) -> dict[str, Any]:
    """The part of `reference_statistics` that depends on the training data only ("rows", "features",
    "label"): the same for every candidate fitted on it, so a retrain computes it once."""
    X = np.asarray(X, dtype=np.float64).reshape(-1, len(vectorizer.columns))
    n = X.shape[0]
    features: dict[str, Any] = {}
    grouped = {i for members in vectorizer.groups.values() for _, i in members}
    for j, column in enumerate(vectorizer.columns):
        if j in grouped:
            continue
        col = X[:, j]
        if j in vectorizer.bools:
            features[column] = {
                "kind": "category",
                "frequencies": _shares({"false": int((col == 0).sum()), "true": int((col == 1).sum())}, n),
                "missing": float(np.isnan(col).mean()) if n else 0.0,
            }
        else:
            features[column] = _numeric_stats(col)
    for field, members in vectorizer.groups.items():
        hot = X[:, [i for _, i in members]] if members else np.zeros((n, 0))
        counts = {value: int((hot[:, k] == 1).sum()) for k, (value, _) in enumerate(members)}
        features[field] = {
            "kind": "category",
            "frequencies": _shares(counts, n),
            "missing": float((hot.sum(axis=1) == 0).mean()) if n else 0.0,
        }
    task = vectorizer.spec.label.type
    labels = list(y)
    if task == "binary":
        label: dict[str, Any] = {"kind": "binary",
                                 "rate": float(np.mean([int(v) for v in labels])) if labels else None}
    elif task == "multiclass":
        classes = list(vectorizer.spec.label.classes or ())
        label = {"kind": "category",
                 "frequencies": _shares({c: sum(1 for v in labels if v == c) for c in classes}, len(labels))}
    else:
        stats = _numeric_stats(np.asarray(labels, dtype=np.float64))
        label = {k: v for k, v in stats.items() if k != "missing"}
    return {"rows": n, "features": features, "label": label}


def score_statistics(predictions: Predictions) -> dict[str, Any]:
    """The part of `reference_statistics` that depends on the model: "holdout_rows" and "scores"."""
    scores = np.asarray(predictions.scores, dtype=np.float64)
    score_edges = quantile_edges(scores)
    return {"holdout_rows": len(scores), "scores": {"edges": score_edges, "counts": bin_counts(score_edges, scores)}}
