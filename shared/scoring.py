"""Scoring one request fast: a model version compiled once into a `Scorer` (serving's request path).

A one-row pandas DataFrame through a scikit-learn pipeline costs milliseconds, nearly all of it input
handling and validation (sklearn #16653); the arithmetic of a linear model on ~40 inputs costs a few
µs. `compile_scorer` picks one path per version, once:

- ``linear``: LogisticRegression (binary or multinomial), LinearRegression, Ridge, Lasso, ElasticNet,
  alone or behind SimpleImputer / StandardScaler steps (the trainer's pipelines) or behind a
  ColumnTransformer of such numeric steps and OneHotEncoders (a user's pipeline fitted on a
  DataFrame). Every step is folded into plain Python floats per input (imputed value, mean,
  coefficient / scale; per category value its coefficient), so a row is one loop of float
  arithmetic: on ~40 inputs that beats numpy, whose per-call overhead is ~1 µs per operation.
- ``forest``: a RandomForest / ExtraTrees on the Vectorizer row: its trees' predictions summed in
  order and averaged, as the forest's predict does, without joblib's per-call dispatch (~4 ms).
- ``sklearn``: any other scikit-learn model on the Vectorizer row: its own predict_proba / predict on
  a 2-D float64 array, with parameter validation off, the finite check off when the model takes NaN
  (probed once), and one OpenMP / BLAS thread.
- ``frame``: any other model fitted on a DataFrame: its own predict_proba / predict on a one-row
  DataFrame. Slow (ms); the fallback for steps nothing here compiles.
- ``river``: ``predict_proba_one`` / ``predict_one`` on ``Vectorizer.river_x``, by the rules of
  shared.modeling.predict_one_river.

A fast path (linear, forest) proves itself when compiled: it scores synthetic requests (present,
missing and unknown values) next to the path that calls the model itself, and is dropped for that
path, with a warning, if a score or probability differs by more than 1e-9 (relative, above 1).

Inputs (``version.inputs``) come in two shapes. The trainer's models take the spec's Vectorizer
columns. A user's pipeline takes named columns: each a spec feature (from the request-time features)
or an event field (from the event's data); category, string and timestamp fields are passed as the
event has them, every other input as a float (missing = NaN).
"""
from __future__ import annotations

import logging
import math
import threading
from collections.abc import Sequence
from operator import mul
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, NamedTuple, Protocol

import numpy as np

from shared.errors import ScoringError
from shared.events import ModelVersion
from shared.modeling import Vectorizer, predict_one_river
from shared.spec import PipelineSpec, number_text

__all__ = ["Scored", "Scorer", "compile_scorer", "example_rows", "warm_up"]

log = logging.getLogger(__name__)

TOLERANCE = 1e-9  # how far a fast path may be from the model's own scores (relative above 1)
_RAW_TYPES = {"category", "string", "timestamp"}  # event field types a user's DataFrame holds as they are


class Scored(NamedTuple):
    """One request's outcome, as shared.modeling.Predictions defines them."""

    score: float  # binary: P(positive); multiclass: the largest class probability; regression: the prediction
    label: Any  # binary: 0/1 (score >= 0.5; serving applies the spec's threshold to score); multiclass: class
    proba: dict[str, float] | None = None  # multiclass: {class: probability} in `classes` order


class Scorer(Protocol):
    """A model version ready to score requests; thread-safe (nothing changes after compile_scorer)."""

    classes: list[str] | None  # multiclass: the class order of `proba`; binary and regression: None
    path: str  # "linear", "forest", "sklearn", "frame" or "river" (see the module docstring)

    def score_one(self, features: dict, data: dict) -> Scored:
        """One request: its request-time features and the event's fields (raises ScoringError)."""
        ...

    def score_many(self, rows: list[tuple[dict, dict]]) -> list[Scored]:
        """Many requests at once, one Scored per (features, data) pair, in order; one row that cannot
        be scored raises ScoringError for all (score_one them to isolate it)."""
        ...

    def vector(self, features: dict, data: dict) -> dict[str, float | None]:
        """The model's input values by name for the prediction log (missing = None)."""
        ...


class _Unsupported(Exception):
    """The model is outside what a fast path compiles; the message says what."""


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= TOLERANCE * max(1.0, abs(b))


def _number(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if value != value else value


def _expit(z: float) -> float:
    # math.exp overflows (raises) past ~709: only ever exponentiate a non-positive number.
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def _softmax(z: list[float]) -> list[float]:
    top = max(z)  # as sklearn.utils.extmath.softmax: shift by the max, so exp never overflows
    e = [math.exp(v - top) for v in z]
    total = sum(e)
    return [v / total for v in e]


# ---------------------------------------------------------------- inputs

class _SpecInputs:
    """The trainer's inputs: the spec's Vectorizer columns."""

    raw: frozenset[str] = frozenset()

    def __init__(self, vectorizer: Vectorizer):
        self.names = vectorizer.columns
        self.values = vectorizer.values
        self.row = vectorizer.row
        self.matrix = vectorizer.matrix

    def vector(self, features: dict, data: dict) -> dict[str, float | None]:
        # _number inlined: this runs per request for the prediction log.
        return {name: None if v is None or v != v else float(v)
                for name, v in zip(self.names, self.values(features, data))}

    def frame(self, rows: Sequence[tuple[dict, dict]]) -> Any:
        import pandas as pd

        return pd.DataFrame(self.matrix(rows), columns=self.names)


class _NamedInputs:
    """A user's inputs by name: spec features from the features, event fields from the event's data."""

    def __init__(self, names: Sequence[str], spec: PipelineSpec):
        features = {f.name for f in spec.features.definitions}
        fields = spec.event.fields
        self.names = list(names)
        self._sources: list[tuple[bool, str]] = []  # (from the features?, name)
        raw = set()
        for name in self.names:
            if name not in features and name not in fields:
                raise ScoringError(f"model input {name!r} is neither a feature nor an event field of spec "
                                   f"{spec.name!r}")
            self._sources.append((name in features, name))
            if name not in features and fields[name].type in _RAW_TYPES:
                raw.add(name)
        self.raw = frozenset(raw)
        # The prediction log holds numbers: a category input is logged one-hot over the spec's values,
        # named as the Vectorizer names them ("field=value"); string and timestamp inputs are left out.
        groups = Vectorizer(spec).groups
        self._onehot = {name: [value for value, _ in groups[name]] for name in self.raw if name in groups}

    def values(self, features: dict, data: dict) -> list[Any]:
        fget, dget = features.get, data.get
        return [fget(name) if feature else dget(name) for feature, name in self._sources]

    def row(self, features: dict, data: dict) -> np.ndarray:
        return np.array(self.values(features, data), dtype=np.float64)

    def matrix(self, rows: Sequence[tuple[dict, dict]]) -> np.ndarray:
        return np.array([self.values(f, d) for f, d in rows], dtype=np.float64).reshape(len(rows), -1)

    def vector(self, features: dict, data: dict) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for name, value in zip(self.names, self.values(features, data)):
            if name not in self.raw:
                out[name] = _number(value)
            elif name in self._onehot:
                if type(value) in (int, float):  # as the Vectorizer matches numbers: 1 and 1.0 match "1"
                    value = number_text(value)
                out.update({f"{name}={v}": float(v == value) for v in self._onehot[name]})
        return out

    def frame(self, rows: Sequence[tuple[dict, dict]]) -> Any:
        import pandas as pd

        columns = zip(*[self.values(f, d) for f, d in rows])
        return pd.DataFrame({name: list(col) if name in self.raw else np.array(col, dtype=np.float64)
                             for name, col in zip(self.names, columns)})


# ---------------------------------------------------------------- outcomes

class _Outcome:
    """Scored from a model's class probabilities (in its classes_ order) or its prediction."""

    def __init__(self, task: str, model_classes: Sequence[Any], version_classes: Sequence[str] | None):
        self.task = task
        self.classes: list[str] | None = None
        if task == "binary":
            # As shared.modeling.predict: the class equal to 1 (True too) is positive; a model trained on
            # class names instead finds it as the version's second class. Neither: P(positive) = 0.
            found = [i for i, c in enumerate(model_classes) if c == 1]
            if not found and version_classes:
                found = [i for i, c in enumerate(model_classes) if str(c) == version_classes[1]]
            self.positive = found[0] if found else None
        elif task == "multiclass":
            self.classes = list(version_classes) if version_classes else [str(c) for c in model_classes]
            where = {str(c): i for i, c in enumerate(model_classes)}
            self.align = [where.get(c) for c in self.classes]  # a class the model never saw gets 0

    def of_proba(self, p: Sequence[float]) -> Scored:
        if self.task == "binary":
            score = float(p[self.positive]) if self.positive is not None else 0.0
            if score != score:
                raise ScoringError("the model's probability is not a number")
            return Scored(score, int(score >= 0.5))
        aligned = [float(p[j]) if j is not None else 0.0 for j in self.align]
        if any(v != v for v in aligned):
            raise ScoringError("the model's probability is not a number")
        best = max(range(len(aligned)), key=aligned.__getitem__)  # the first of equal maxima, as argmax
        return Scored(aligned[best], self.classes[best], dict(zip(self.classes, aligned)))

    def of_prediction(self, y: Any) -> Scored:
        y = float(y)
        if not math.isfinite(y):
            raise ScoringError("the model's prediction is not a finite number")
        return Scored(y, y)


# ---------------------------------------------------------------- paths that call the model itself

_limited = threading.local()


def _one_thread() -> None:
    """One OpenMP and one BLAS thread for scoring, set once per scoring thread.

    For one row HistGradientBoosting's OpenMP team costs more than it saves (and spins against the
    event loop on 2 cores). threadpoolctl sets OpenBLAS's limit process-wide, but OpenMP's (libgomp's
    omp_set_num_threads) only for the calling thread: a limit set where a version was compiled does not
    reach the thread that serves it, so each scoring thread sets its own on its first call."""
    if not getattr(_limited, "done", False):
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
        _limited.done = True


class _ModelScorer:
    """The model's own predict_proba / predict on a 2-D float64 array (path "sklearn")."""

    path = "sklearn"

    def __init__(self, model: Any, inputs: Any, outcome: _Outcome):
        self.model, self.inputs, self.outcome = model, inputs, outcome
        self.classes = outcome.classes
        self.vector = inputs.vector
        if outcome.task == "regression":
            self._predict, self._scored = model.predict, outcome.of_prediction
        elif hasattr(model, "predict_proba"):
            self._predict, self._scored = model.predict_proba, outcome.of_proba
        else:
            raise ScoringError(f"a {type(model).__name__} has no predict_proba: it cannot score a "
                               f"{outcome.task} label")
        self._config = {"skip_parameter_validation": True}  # validated when fitted; constant since

    def _probe(self) -> None:
        # Skipping the finite check is safe only for a model that takes NaN (the trainer's tree models
        # do): probe once with every input missing; a model that refuses NaN keeps its own check.
        try:
            self._call(self._encode([({}, {})]))
        except ScoringError:
            return
        self._config["assume_finite"] = True

    def _encode(self, rows: Sequence[tuple[dict, dict]]) -> Any:
        return self.inputs.matrix(rows)

    def _call(self, X: Any) -> np.ndarray:
        import sklearn

        _one_thread()
        try:
            with sklearn.config_context(**self._config):
                return self._predict(X)
        except ValueError as exc:  # what scikit-learn raises for values it refuses (NaN, unknown category)
            raise ScoringError(f"the model refused the request's inputs: {exc}") from exc

    def score_one(self, features: dict, data: dict) -> Scored:
        return self._scored(self._call(self._encode([(features, data)]))[0])

    def score_many(self, rows: list[tuple[dict, dict]]) -> list[Scored]:
        if not rows:
            return []
        return [self._scored(out) for out in self._call(self._encode(rows))]


class _FrameScorer(_ModelScorer):
    """The model's own predict_proba / predict on a DataFrame (path "frame": slow, the fallback)."""

    path = "frame"

    def _encode(self, rows: Sequence[tuple[dict, dict]]) -> Any:
        return self.inputs.frame(rows)


# ---------------------------------------------------------------- forest

class _ForestScorer(_ModelScorer):
    """A forest's trees summed in order and averaged, as its predict_proba / predict does (path "forest").

    The forest's own predict dispatches its trees through joblib on every call (~4 ms for 100 trees
    and one row); the sum is the same arithmetic in the same order, so the scores are identical."""

    path = "forest"

    def __init__(self, model: Any, inputs: Any, outcome: _Outcome):
        from sklearn.ensemble import ExtraTreesClassifier, ExtraTreesRegressor, RandomForestClassifier
        from sklearn.ensemble import RandomForestRegressor

        forests = (RandomForestClassifier, RandomForestRegressor, ExtraTreesClassifier, ExtraTreesRegressor)
        if not isinstance(model, forests) or model.n_outputs_ != 1 or isinstance(inputs, _NamedInputs):
            raise _Unsupported("not a single-output forest on the Vectorizer row")
        super().__init__(model, inputs, outcome)
        self._trees = [tree.tree_ for tree in model.estimators_]
        self._width = int(model.n_classes_) if outcome.task != "regression" else 1

    def _call(self, X: np.ndarray) -> np.ndarray:
        X = np.ascontiguousarray(X, dtype=np.float32)  # the dtype trees split on, as the forest converts
        out = np.zeros((X.shape[0], self._width))
        for tree in self._trees:
            out += tree.predict(X)[:, :self._width]
        out /= len(self._trees)
        return out if self.outcome.task != "regression" else out[:, 0]


# ---------------------------------------------------------------- linear

@dataclass
class _Numeric:
    """An input that reaches the estimator as (x - mean) / scale at column `col`; missing -> fill."""

    pos: int
    col: int
    fill: float | None  # None: no imputer, a missing value cannot be scored
    mean: float = 0.0
    scale: float = 1.0


@dataclass
class _Category:
    """An input one-hot encoded: value -> its estimator column (None: the dropped category)."""

    pos: int
    cols: dict[Any, int | None]
    strict: bool  # handle_unknown="error": an unknown value cannot be scored


def _identity(step: Any) -> bool:
    from sklearn.preprocessing import FunctionTransformer

    # A fitted ColumnTransformer turns "passthrough" into a FunctionTransformer without a func.
    return step is None or (isinstance(step, str) and step == "passthrough") or (
        isinstance(step, FunctionTransformer) and step.func is None)


def _numeric(steps: list[Any], positions: list[int], start: int) -> tuple[list[_Numeric], int]:
    """The terms of numeric inputs through (SimpleImputer) then (StandardScaler); their columns from start."""
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import StandardScaler

    steps = [s for s in steps if not _identity(s)]
    n = len(positions)
    fills: list[float | None] = [None] * n
    kept = list(range(n))
    if steps and isinstance(steps[0], SimpleImputer):
        imputer = steps.pop(0)
        if imputer.n_features_in_ != n:
            raise _Unsupported("a SimpleImputer of another width")
        missing = imputer.missing_values
        if imputer.add_indicator or not (isinstance(missing, float) and math.isnan(missing)):
            raise _Unsupported("a SimpleImputer with an indicator or a missing value other than NaN")
        try:
            stats = np.asarray(imputer.statistics_, dtype=np.float64)
        except (TypeError, ValueError):
            raise _Unsupported("a SimpleImputer with non-numeric statistics") from None
        if imputer.keep_empty_features and np.isnan(stats).any():
            raise _Unsupported("a SimpleImputer keeping an empty column as NaN")
        fills = [float(s) for s in stats]
        kept = [k for k, s in enumerate(stats) if not math.isnan(s)]  # sklearn drops empty columns
    means, scales = [0.0] * len(kept), [1.0] * len(kept)
    if steps and isinstance(steps[0], StandardScaler):
        scaler = steps.pop(0)
        if scaler.n_features_in_ != len(kept):
            raise _Unsupported("a StandardScaler of another width")
        if scaler.with_mean:
            means = [float(m) for m in scaler.mean_]
        if scaler.with_std:
            scales = [float(s) for s in scaler.scale_]
    if steps:
        raise _Unsupported(f"a {type(steps[0]).__name__} among the numeric steps")
    terms = [_Numeric(positions[k], start + i, fills[k], means[i], scales[i]) for i, k in enumerate(kept)]
    return terms, start + len(kept)


def _one_hot(encoder: Any, positions: list[int], start: int) -> tuple[list[_Category], int]:
    if getattr(encoder, "_infrequent_enabled", False):
        raise _Unsupported("a OneHotEncoder grouping infrequent categories")
    terms, col = [], start
    for k, (pos, categories) in enumerate(zip(positions, encoder.categories_)):
        values = categories.tolist()
        if any(v is None or v != v for v in values):
            raise _Unsupported("a OneHotEncoder with a missing value among its categories")
        dropped = None if encoder.drop_idx_ is None else encoder.drop_idx_[k]
        cols: dict[Any, int | None] = {}
        for i, value in enumerate(values):
            if i == dropped:  # drop="first" / "if_binary": that category's row is all 0
                cols[value] = None
            else:
                cols[value] = col
                col += 1
        terms.append(_Category(pos, cols, encoder.handle_unknown == "error"))
    return terms, col


def _positions(columns: Any, names: list[str]) -> list[int]:
    if isinstance(columns, (str, int, np.integer)):
        columns = [columns]
    if isinstance(columns, slice) or callable(columns):
        raise _Unsupported("ColumnTransformer columns given as a slice or a selector")
    columns = list(columns)
    if columns and all(isinstance(c, (bool, np.bool_)) for c in columns):
        return [i for i, c in enumerate(columns) if c]
    if all(isinstance(c, str) for c in columns):
        return [names.index(c) for c in columns]
    if all(isinstance(c, (int, np.integer)) for c in columns):
        return [int(c) for c in columns]
    raise _Unsupported("ColumnTransformer columns of mixed kinds")


def _column_terms(ct: Any, inputs: Any) -> tuple[list[_Numeric | _Category], int]:
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    if list(getattr(ct, "feature_names_in_", [])) != inputs.names:
        raise _Unsupported("a ColumnTransformer fitted on other columns than the version's inputs")
    terms: list[_Numeric | _Category] = []
    width = 0
    for name, transformer, columns in ct.transformers_:
        out = ct.output_indices_[name]
        if (isinstance(transformer, str) and transformer == "drop") or out.start == out.stop:
            continue
        positions = _positions(columns, inputs.names)
        steps = [s for _, s in transformer.steps] if isinstance(transformer, Pipeline) else [transformer]
        steps = [s for s in steps if not _identity(s)]
        if steps and isinstance(steps[-1], OneHotEncoder):
            if len(steps) > 1:
                raise _Unsupported("steps before a OneHotEncoder")
            found, end = _one_hot(steps[0], positions, out.start)
        else:
            if any(inputs.names[p] in inputs.raw for p in positions):
                raise _Unsupported("a category, string or timestamp field through numeric steps")
            found, end = _numeric(steps, positions, out.start)
        if end != out.stop:
            raise _Unsupported(f"transformer {name!r} makes another number of columns than compiled")
        terms += found
        width = max(width, end)
    return terms, width


def _head(estimator: Any) -> tuple[np.ndarray, np.ndarray, bool]:
    """(coef as rows x columns, intercept per row, is a logistic regression) of a linear estimator."""
    from sklearn.linear_model import ElasticNet, Lasso, LinearRegression, LogisticRegression, Ridge

    if not isinstance(estimator, (LogisticRegression, LinearRegression, Ridge, Lasso, ElasticNet)):
        raise _Unsupported(f"a {type(estimator).__name__} estimator")
    if not isinstance(estimator.coef_, np.ndarray):
        raise _Unsupported("sparse coefficients")
    coef = np.atleast_2d(np.asarray(estimator.coef_, dtype=np.float64))
    intercept = np.atleast_1d(np.asarray(estimator.intercept_, dtype=np.float64))
    if not isinstance(estimator, LogisticRegression) and coef.shape[0] != 1:
        raise _Unsupported("a multi-output regression")
    return coef, intercept, isinstance(estimator, LogisticRegression)


class _LinearScorer:
    """A linear model and its imputer / scaler / one-hot steps folded into Python floats (path "linear")."""

    path = "linear"

    def __init__(self, model: Any, inputs: Any, outcome: _Outcome):
        from sklearn.compose import ColumnTransformer
        from sklearn.pipeline import Pipeline

        steps = [s for _, s in model.steps] if isinstance(model, Pipeline) else [model]
        coef, intercept, logistic = _head(steps[-1])
        before = [s for s in steps[:-1] if not _identity(s)]
        if before and isinstance(before[0], ColumnTransformer):
            if len(before) > 1:
                raise _Unsupported("steps between the ColumnTransformer and the estimator")
            terms, width = _column_terms(before[0], inputs)
        else:
            if inputs.raw:
                raise _Unsupported("category inputs without a ColumnTransformer")
            terms, width = _numeric(before, list(range(len(inputs.names))), 0)
        if width != coef.shape[1] or (outcome.task == "regression") == logistic:
            raise _Unsupported("an estimator that does not fit these columns or this label")
        self.inputs, self.outcome, self.classes = inputs, outcome, outcome.classes
        self.vector = inputs.vector
        self._logistic = logistic
        numeric = sorted((t for t in terms if isinstance(t, _Numeric)), key=lambda t: t.pos)
        categories = [t for t in terms if isinstance(t, _Category)]
        self._numeric_pos = [t.pos for t in numeric]
        self._gather = self._numeric_pos != list(range(len(inputs.names)))  # the trainer's: every input
        self._numeric_names = [inputs.names[t.pos] for t in numeric]
        self._category_pos = [t.pos for t in categories]
        self._category_names = [inputs.names[t.pos] for t in categories]
        self._strict = [t.strict for t in categories]
        self._means = [t.mean for t in numeric]
        rows = coef.shape[0]
        if rows == 1:
            # One output (binary logistic, regression): fold scale and coefficient into one weight, and
            # the imputed value into its whole contribution.
            c = coef[0]
            self._intercept = float(intercept[0])
            self._weights = [float(c[t.col]) / t.scale for t in numeric]
            self._missing = [None if t.fill is None else (t.fill - t.mean) / t.scale * float(c[t.col])
                             for t in numeric]
            self._tables = [{v: (0.0 if col is None else float(c[col])) for v, col in t.cols.items()}
                            for t in categories]
        else:
            # Multinomial: the scaled inputs once, then one dot product per class.
            self._intercepts = [float(b) for b in intercept]
            self._fills = [t.fill for t in numeric]
            self._scales = [t.scale for t in numeric]
            self._coef_rows = [[float(coef[k, t.col]) for t in numeric] for k in range(rows)]
            self._vectors = [{v: ([0.0] * rows if col is None else [float(x) for x in coef[:, col]])
                              for v, col in t.cols.items()} for t in categories]
        self._one = rows == 1
        self._positive = getattr(outcome, "positive", None) if outcome.task == "binary" else None

    def _missing_input(self, xs: list[Any]) -> ScoringError:
        unimputed = self._missing if self._one else self._fills
        i = next(i for i, x in enumerate(xs) if (x is None or x != x) and unimputed[i] is None)
        name = self._numeric_names[i]
        return ScoringError(f"input {name!r} is missing and the model has no imputer for it")

    def _unknown(self, i: int, value: Any) -> ScoringError:
        return ScoringError(f"input {self._category_names[i]!r}: the model's encoder refuses the unknown "
                            f"value {value!r}")

    def _logit(self, values: list[Any]) -> float:
        z = self._intercept
        xs = [values[p] for p in self._numeric_pos] if self._gather else values
        for x, mean, weight, missing in zip(xs, self._means, self._weights, self._missing):
            if x is None or x != x:
                if missing is None:
                    raise self._missing_input(xs)
                z += missing
            else:
                z += (x - mean) * weight
        for i, (p, table) in enumerate(zip(self._category_pos, self._tables)):
            c = table.get(values[p])
            if c is None:
                if self._strict[i]:
                    raise self._unknown(i, values[p])
                continue  # unknown: every one-hot column 0, nothing to add
            z += c
        return z

    def _logits(self, values: list[Any]) -> list[float]:
        xs = [values[p] for p in self._numeric_pos] if self._gather else values
        scaled = []
        for x, fill, mean, scale in zip(xs, self._fills, self._means, self._scales):
            if x is None or x != x:
                if fill is None:
                    raise self._missing_input(xs)
                x = fill
            scaled.append((x - mean) / scale)
        z = [b + sum(map(mul, scaled, row)) for b, row in zip(self._intercepts, self._coef_rows)]
        for i, (p, table) in enumerate(zip(self._category_pos, self._vectors)):
            c = table.get(values[p])
            if c is None:
                if self._strict[i]:
                    raise self._unknown(i, values[p])
                continue
            z = [a + b for a, b in zip(z, c)]
        return z

    def score_one(self, features: dict, data: dict) -> Scored:
        values = self.inputs.values(features, data)
        if self._one:
            z = self._logit(values)
            if not math.isfinite(z):
                raise ScoringError("the model's score is not a finite number")
            if not self._logistic:
                return Scored(z, z)
            p = _expit(z)
            if self._positive == 1:  # the usual binary case, without building the class probabilities
                return Scored(p, int(p >= 0.5))
            return self.outcome.of_proba((1.0 - p, p))  # as sklearn: P(classes_[0]) is 1 - P(classes_[1])
        z = self._logits(values)
        if not all(math.isfinite(v) for v in z):
            raise ScoringError("the model's score is not a finite number")
        return self.outcome.of_proba(_softmax(z))

    def score_many(self, rows: list[tuple[dict, dict]]) -> list[Scored]:
        return [self.score_one(f, d) for f, d in rows]


# ---------------------------------------------------------------- river

class _RiverScorer:
    """A river model on Vectorizer.river_x, by shared.modeling.predict_one_river (path "river")."""

    path = "river"

    def __init__(self, model: Any, vectorizer: Vectorizer, version: ModelVersion):
        self.model, self.task = model, version.task
        self.classes = list(version.classes or ()) if version.task == "multiclass" else None
        self._x = vectorizer.river_x
        self.vector = _SpecInputs(vectorizer).vector

    def score_one(self, features: dict, data: dict) -> Scored:
        score, label, proba = predict_one_river(self.model, self.task, self._x(features, data))
        if self.task == "regression":
            return Scored(score, score)
        if self.task == "binary":
            return Scored(score, label)
        classes = self.classes or sorted(proba)
        if label is None:  # learnt nothing yet: the first class, as shared.modeling.predict says
            label = classes[0] if classes else None
        return Scored(score, label, {c: float(proba.get(c, 0.0)) for c in classes})

    def score_many(self, rows: list[tuple[dict, dict]]) -> list[Scored]:
        return [self.score_one(f, d) for f, d in rows]


# ---------------------------------------------------------------- compiling

def _agrees(fast: Scorer, reference: Scorer, rows: Sequence[tuple[dict, dict]]) -> str | None:
    """None if `fast` scores every row as `reference` does (or refuses the same rows), else why not."""
    for features, data in rows:
        got = want = None
        try:
            got = fast.score_one(features, data)
        except ScoringError:
            pass
        try:
            want = reference.score_one(features, data)
        except ScoringError:
            pass
        if got is None or want is None:
            if got is not want:
                return f"one refuses a row the other scores: {got} vs {want}"
            continue
        if not _close(got.score, want.score):
            return f"score {got.score!r} vs the model's {want.score!r}"
        if want.proba is not None and not all(_close(got.proba[c], p) for c, p in want.proba.items()):
            return f"probabilities {got.proba} vs the model's {want.proba}"
    return None


def _unwrap(model: Any) -> Any:
    # An online artifact holds the river model with the trainer's state (services/trainer OnlineArtifact).
    if not hasattr(model, "predict_one") and hasattr(model, "model"):
        return model.model
    return model


def compile_scorer(model: object, version: ModelVersion, spec: PipelineSpec) -> Scorer:
    """The fastest path that scores this version as the model itself does (see the module docstring).

    `model` is what shared.registry.load_model returned for the version. Raises ScoringError if the
    version's inputs do not fit the spec. Compiling (and scoring on the sklearn path) limits OpenBLAS
    to one thread for the whole process and OpenMP to one thread per scoring thread: right for
    serving, not for a process that also trains."""
    vectorizer = Vectorizer(spec)
    spec_inputs = list(version.inputs) == vectorizer.columns
    if version.library == "river":
        if not spec_inputs:
            raise ScoringError(f"river model {version.key}: its inputs are not the spec's Vectorizer columns")
        return _RiverScorer(_unwrap(model), vectorizer, version)
    inputs = _SpecInputs(vectorizer) if spec_inputs else _NamedInputs(version.inputs, spec)
    outcome = _Outcome(version.task, list(getattr(model, "classes_", ())), version.classes)
    reference: _ModelScorer
    if hasattr(model, "feature_names_in_"):  # fitted on a DataFrame: give it one
        reference = _FrameScorer(model, inputs, outcome)
    elif inputs.raw:
        raise ScoringError(f"model {version.key} was fitted on an array but takes category, string or "
                           f"timestamp fields: {sorted(inputs.raw)}")
    else:
        reference = _ModelScorer(model, inputs, outcome)
        reference._probe()
    rows = [*example_rows(spec, 6, seed=20260), ({}, {})]
    for fast_path in (_LinearScorer, _ForestScorer):
        try:
            fast = fast_path(model, inputs, outcome)
        except _Unsupported as why:
            log.debug("model %s: no %s path: %s", version.key, fast_path.path, why)
            continue
        if (why := _agrees(fast, reference, rows)) is None:
            return fast
        log.warning("model %s: the %s path does not score as the model does (%s); using the %s path",
                    version.key, fast.path, why, reference.path)
    return reference


# ---------------------------------------------------------------- synthetic requests

def example_rows(spec: PipelineSpec, n: int, *, seed: int = 0) -> list[tuple[dict, dict]]:
    """n synthetic (features, data) requests of a spec: every feature and field present (numbers in
    the field's bounds), about one category value in five unknown to the spec."""
    rng = np.random.default_rng(seed)
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    names = [f.name for f in spec.features.definitions]
    rows = []
    for _ in range(n):
        features = {name: float(rng.normal(0.0, 50.0)) for name in names}
        data: dict[str, Any] = {}
        for name, field in spec.event.fields.items():
            low = field.min if field.min is not None else 0.0
            high = field.max if field.max is not None else low + 1000.0
            match field.type:
                case "category":
                    values = list(field.values or ())
                    data[name] = values[int(rng.integers(len(values)))] if rng.random() < 0.8 else "unknown"
                case "float":
                    data[name] = float(rng.uniform(low, high))
                case "int":
                    data[name] = int(rng.integers(math.ceil(low), math.floor(high) + 1))
                case "bool":
                    data[name] = bool(rng.random() < 0.5)
                case "timestamp":
                    at = start + timedelta(seconds=float(rng.uniform(0, 86400 * 30)))
                    data[name] = at.isoformat().replace("+00:00", "Z")
                case _:
                    data[name] = f"text-{int(rng.integers(1000))}"
        rows.append((features, data))
    return rows


def warm_up(scorer: Scorer, spec: PipelineSpec) -> None:
    """Score a few synthetic requests (every input missing; typical ones) so the first real request
    pays no lazy initialisation (imports, the thread limits, caches). Call it before a version is
    swapped in, in the thread that will score with it: the OpenMP thread limit is per thread."""
    rows = [({}, {}), *example_rows(spec, 3, seed=1)]
    for features, data in rows:
        try:
            scorer.score_one(features, data)
        except ScoringError:
            pass  # a model without an imputer refuses the all-missing request: still warmed up
        scorer.vector(features, data)
    try:
        scorer.score_many(rows[1:])
    except ScoringError:
        pass

