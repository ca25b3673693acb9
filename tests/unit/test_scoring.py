"""shared.scoring: every path scores as the model itself does (within 1e-9), for binary, multiclass and
regression labels, on the trainer's pipelines, a user's DataFrame pipeline and river models; missing
values, unknown categories and extreme values included."""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import KBinsDiscretizer, OneHotEncoder, StandardScaler

from shared import scoring
from shared.errors import ScoringError
from shared.events import ModelVersion
from shared.modeling import Vectorizer, build_model, encode_label, model_classes, predict, predict_one_river
from shared.scoring import Scored, compile_scorer, example_rows, warm_up
from shared.spec import ModelCandidate, PipelineSpec, parse_spec
from tests.data import FRAUD, fraud_text, fraud_training_examples

MULTICLASS = parse_spec(fraud_text(label="multiclass", classes="[low, mid, high]"))
REGRESSION = parse_spec(fraud_text(label="regression"))
SPECS = {"binary": FRAUD, "multiclass": MULTICLASS, "regression": REGRESSION}
EXTRA = parse_spec(fraud_text().replace("    ts: {type: timestamp}\n", (
    "    ts: {type: timestamp}\n"
    "    card_present: {type: bool, required: false}\n"
    "    items: {type: int, required: false}\n"
    "    note: {type: string, required: false}\n"
    "    opened: {type: timestamp, required: false}\n"
    "    tier: {type: category, values: [1, 2, 3], required: false}\n"), 1))
FEATURES = [d.name for d in FRAUD.features.definitions]
EMPTY = "country_distinct_24h"  # never present in training: the imputer / DropEmptyColumns see it empty
# A user's pipeline: three event fields and a few features by name (secs_since_last is often missing).
USER_NUMBERS = ["amount", "txn_count_1h", "amount_mean_24h", "amount_ratio_24h", "secs_since_last"]
USER_CATEGORIES = ["merchant_category", "country", "channel"]
USER_INPUTS = USER_NUMBERS + USER_CATEGORIES


def close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-9 * max(1.0, abs(b))


def filled(features: dict, names: list[str]) -> dict:
    """The features with every one of `names` present (1.0 where missing)."""
    return {**dict.fromkeys(names, 1.0), **{k: v for k, v in features.items() if v is not None}}


@pytest.fixture(scope="module")
def data():
    """Fraud training examples as (features, data) rows, with labels for each label type."""
    examples = fraud_training_examples(1500)
    rows = [({k: v for k, v in e["features"].items() if k != EMPTY}, e["data"]) for e in examples]
    binary = [encode_label(FRAUD, e["label"]) for e in examples]
    signal = np.array([(f.get("txn_count_1h") or 0) + d["amount"] / 100 for f, d in rows])
    signal += np.random.default_rng(3).normal(scale=0.5, size=len(rows))
    low, high = np.quantile(signal, [1 / 3, 2 / 3])
    labels = {"binary": binary,
              "multiclass": ["low" if s < low else "mid" if s < high else "high" for s in signal],
              "regression": [float(3 * s + 10) for s in signal]}
    return rows, labels


def edge_rows(rows: list[tuple[dict, dict]]) -> list[tuple[dict, dict]]:
    """Missing everything, missing features, NaN, unknown and missing categories, extreme values, and
    a value for the column that was empty in training."""
    f, d = rows[7]
    return [
        ({}, {}),
        (dict.fromkeys(FEATURES), dict(d)),
        ({**f, "amount_mean_24h": float("nan"), "txn_count_1h": None}, d),
        (f, {**d, "merchant_category": "unknown", "country": "XX"}),
        (f, {k: v for k, v in d.items() if k not in ("channel", "amount")}),
        (dict.fromkeys(FEATURES, 1e9), {**d, "amount": 50000.0}),
        (dict.fromkeys(FEATURES, -1e9), {**d, "amount": 0.0}),
        ({**f, EMPTY: 3.0}, d),
        *example_rows(FRAUD, 5, seed=11),
    ]


def version(spec: PipelineSpec, algorithm: str, library: str = "sklearn",
            inputs: list[str] | None = None) -> ModelVersion:
    return ModelVersion.model_construct(
        name="m", version=1, library=library, algorithm=algorithm, task=spec.label.type,
        inputs=inputs if inputs is not None else Vectorizer(spec).columns, classes=model_classes(spec))


def trained(spec: PipelineSpec, algorithm: str, params: dict, rows, labels) -> Any:
    candidate = ModelCandidate(name="m", library="sklearn", algorithm=algorithm, params=params)
    return build_model(candidate, spec).fit(Vectorizer(spec).matrix(rows), labels)


def assert_scores_as(scorer, rows, expected) -> None:
    """scorer.score_one and score_many on rows equal the Predictions `expected` (shared.modeling.predict)."""
    many = scorer.score_many(rows)
    for i, (features, data) in enumerate(rows):
        got = scorer.score_one(features, data)
        assert got == many[i]
        assert close(got.score, float(expected.scores[i])), (i, got, expected.scores[i])
        if expected.proba is not None:
            assert list(got.proba) == expected.classes
            assert all(close(got.proba[c], float(p)) for c, p in zip(expected.classes, expected.proba[i]))
            assert got.label == expected.labels[i]
        elif expected.labels.dtype == np.int64:
            assert got.label == expected.labels[i] or abs(got.score - 0.5) < 1e-9  # binary: 0/1 at 0.5
        else:
            assert got.label == got.score


# ---------------------------------------------------------------- the trainer's models

TRAINER_MODELS = [
    ("binary", "logistic_regression", {"max_iter": 500}, "linear"),
    ("multiclass", "logistic_regression", {"max_iter": 500}, "linear"),
    ("regression", "ridge", {}, "linear"),
    ("binary", "hist_gradient_boosting", {"max_iter": 30}, "sklearn"),
    ("multiclass", "hist_gradient_boosting", {"max_iter": 30}, "sklearn"),
    ("regression", "hist_gradient_boosting", {"max_iter": 30}, "sklearn"),
    ("binary", "random_forest", {"n_estimators": 20}, "forest"),
    ("multiclass", "random_forest", {"n_estimators": 20}, "forest"),
    ("regression", "random_forest", {"n_estimators": 20}, "forest"),
]


@pytest.mark.parametrize(("task", "algorithm", "params", "path"), TRAINER_MODELS)
def test_the_trainer_models_score_as_their_predict(data, task, algorithm, params, path):
    rows, labels = data
    spec = SPECS[task]
    model = trained(spec, algorithm, params, rows, labels[task])
    scorer = compile_scorer(model, version(spec, algorithm), spec)
    assert scorer.path == path
    assert scorer.classes == (["low", "mid", "high"] if task == "multiclass" else None)
    sample = rows[:300] + edge_rows(rows)
    X = Vectorizer(spec).matrix(sample)
    assert_scores_as(scorer, sample, predict(model, "sklearn", task, X, model_classes(spec)))


def test_linear_scores_equal_on_other_field_types_bool_int_timestamp_numeric_category():
    rows = example_rows(EXTRA, 400, seed=5)
    rows[::7] = [({}, {})] * len(rows[::7])
    labels = [int(f["txn_count_1h"] + d["items"] / 500 > 1) if d else 0 for f, d in rows]
    model = trained(EXTRA, "logistic_regression", {"max_iter": 500}, rows, labels)
    scorer = compile_scorer(model, version(EXTRA, "logistic_regression"), EXTRA)
    assert scorer.path == "linear"
    sample = example_rows(EXTRA, 50, seed=6) + [({}, {"tier": 2, "card_present": True}), ({}, {"tier": "9"})]
    assert_scores_as(scorer, sample, predict(model, "sklearn", "binary", Vectorizer(EXTRA).matrix(sample)))


def test_a_linear_model_without_imputer_refuses_a_missing_input_as_scikit_learn_does(data):
    rows, labels = data
    complete = [(filled(f, FEATURES), d) for f, d in rows]
    X = Vectorizer(FRAUD).matrix(complete)
    model = Pipeline([("scale", StandardScaler()), ("model", LogisticRegression(max_iter=500))])
    model.fit(X, labels["binary"])
    scorer = compile_scorer(model, version(FRAUD, "logistic_regression"), FRAUD)
    assert scorer.path == "linear"
    assert close(scorer.score_one(*complete[0]).score, model.predict_proba(X[:1])[0, 1])
    f, d = complete[0]
    with pytest.raises(ScoringError, match="'secs_since_last' is missing"):
        scorer.score_one({**f, "secs_since_last": None}, d)
    with pytest.raises(ValueError):  # what the model itself says
        model.predict_proba(Vectorizer(FRAUD).row({**f, "secs_since_last": None}, d)[None])
    warm_up(scorer, FRAUD)  # the all-missing warm-up request is refused, not raised


def test_score_many_of_nothing_is_nothing(data):
    rows, labels = data
    for algorithm, path in [("logistic_regression", "linear"), ("hist_gradient_boosting", "sklearn")]:
        model = trained(FRAUD, algorithm, {"max_iter": 20}, rows[:300], labels["binary"][:300])
        assert compile_scorer(model, version(FRAUD, algorithm), FRAUD).score_many([]) == []


def test_vector_is_the_vectorizer_row_by_column_with_none_for_missing(data):
    rows, labels = data
    model = trained(FRAUD, "logistic_regression", {"max_iter": 200}, rows, labels["binary"])
    scorer = compile_scorer(model, version(FRAUD, "logistic_regression"), FRAUD)
    v = Vectorizer(FRAUD)
    for features, d in edge_rows(rows):
        vector = scorer.vector(features, d)
        assert list(vector) == v.columns
        for value, expected in zip(vector.values(), v.row(features, d)):
            assert (value is None) if math.isnan(expected) else (value == expected and type(value) is float)
    vector = scorer.vector({}, {"merchant_category": "unknown", "country": "FR"})
    assert vector["country=FR"] == 1.0 and vector["merchant_category=fuel"] == 0.0
    assert vector["amount"] is None


# ---------------------------------------------------------------- a user's DataFrame pipeline

def frame(rows: list[tuple[dict, dict]]) -> pd.DataFrame:
    """What a user writes by hand: numbers as floats (missing NaN), categories as the event has them."""
    out = {name: [f.get(name, d.get(name)) for f, d in rows] for name in USER_INPUTS}
    return pd.DataFrame({name: np.array(values, dtype=np.float64) if name in USER_NUMBERS else values
                         for name, values in out.items()})


def user_pipeline(estimator: Any, *, impute: bool = True, **one_hot: Any) -> Pipeline:
    numeric = StandardScaler()
    if impute:
        numeric = Pipeline([("impute", SimpleImputer()), ("scale", numeric)])
    columns = ColumnTransformer([
        ("num", numeric, USER_NUMBERS),
        ("cat", OneHotEncoder(**{"handle_unknown": "ignore", **one_hot}), USER_CATEGORIES)])
    return Pipeline([("columns", columns), ("model", estimator)])


def assert_user_scores_equal(scorer, model, rows, task: str) -> None:
    many = scorer.score_many(rows)
    for i, (features, data) in enumerate(rows):
        got = scorer.score_one(features, data)
        assert got == many[i]
        X = frame([(features, data)])
        if task == "regression":
            assert close(got.score, float(model.predict(X)[0])) and got.label == got.score
            continue
        proba = model.predict_proba(X)[0]
        if task == "binary":
            assert close(got.score, float(proba[list(model.classes_).index(1)]))
        else:
            expected = dict(zip(model.classes_, proba))
            assert all(close(got.proba[c], expected[c]) for c in scorer.classes)
            assert got.label == max(scorer.classes, key=expected.get) and got.score == max(got.proba.values())


USER_MODELS = [
    ("binary", lambda: LogisticRegression(max_iter=500), {}),
    ("binary", lambda: LogisticRegression(max_iter=500, C=0.1), {"drop": "first"}),
    ("multiclass", lambda: LogisticRegression(max_iter=500), {}),
    ("multiclass", lambda: LogisticRegression(max_iter=500), {"drop": "if_binary"}),
    ("regression", Ridge, {}),
    ("regression", LinearRegression, {}),
]


@pytest.mark.filterwarnings("ignore:Found unknown categories")  # sklearn's, with drop and handle_unknown
@pytest.mark.parametrize(("task", "estimator", "one_hot"), USER_MODELS)
def test_a_user_column_transformer_pipeline_scores_as_its_predict_proba_on_a_dataframe(
        data, task, estimator, one_hot):
    rows, labels = data
    y = labels[task] if task != "binary" else [bool(v) for v in labels["binary"]]  # a user's booleans
    model = user_pipeline(estimator(), **one_hot).fit(frame(rows), y)
    spec = SPECS[task]
    scorer = compile_scorer(model, version(spec, "user", inputs=USER_INPUTS), spec)
    assert scorer.path == "linear"
    assert_user_scores_equal(scorer, model, rows[:200] + edge_rows(rows), task)


def test_a_user_pipeline_on_two_classes_of_a_multiclass_label_gives_the_third_zero(data):
    rows, labels = data
    kept = [(r, y) for r, y in zip(rows, labels["multiclass"]) if y != "mid"]
    model = user_pipeline(LogisticRegression(max_iter=500))
    model.fit(frame([r for r, _ in kept]), [y for _, y in kept])
    scorer = compile_scorer(model, version(MULTICLASS, "user", inputs=USER_INPUTS), MULTICLASS)
    assert scorer.path == "linear"
    got = scorer.score_one(*rows[0])
    proba = dict(zip(model.classes_, model.predict_proba(frame(rows[:1]))[0]))
    assert got.proba["mid"] == 0.0
    assert close(got.proba["high"], proba["high"]) and close(got.proba["low"], proba["low"])


def test_a_user_pipeline_refuses_what_its_model_refuses(data):
    rows, labels = data
    f, d = rows[1]
    complete = filled(f, USER_NUMBERS)
    # no imputer: a missing number cannot be scored (scikit-learn raises too)
    model = user_pipeline(LogisticRegression(max_iter=500), impute=False)
    model.fit(frame([(filled(f, USER_NUMBERS), d) for f, d in rows]), labels["binary"])
    scorer = compile_scorer(model, version(FRAUD, "user", inputs=USER_INPUTS), FRAUD)
    assert scorer.path == "linear"
    scorer.score_one(complete, d)
    with pytest.raises(ScoringError, match="'secs_since_last' is missing"):
        scorer.score_one({**complete, "secs_since_last": None}, d)
    with pytest.raises(ValueError):
        model.predict_proba(frame([({**complete, "secs_since_last": None}, d)]))
    # handle_unknown="error": an unknown category cannot be scored either
    model = user_pipeline(LogisticRegression(max_iter=500), handle_unknown="error")
    model.fit(frame(rows), labels["binary"])
    scorer = compile_scorer(model, version(FRAUD, "user", inputs=USER_INPUTS), FRAUD)
    assert scorer.path == "linear"
    with pytest.raises(ScoringError, match="'country'.*'XX'"):
        scorer.score_one(f, {**d, "country": "XX"})
    with pytest.raises(ValueError):
        model.predict_proba(frame([(f, {**d, "country": "XX"})]))


def test_a_user_pipeline_with_other_steps_falls_back_to_a_dataframe(data):
    rows, labels = data
    bins = ColumnTransformer([
        ("bins", Pipeline([("impute", SimpleImputer()), ("bins", KBinsDiscretizer(n_bins=4))]), USER_NUMBERS),
        ("cat", OneHotEncoder(handle_unknown="ignore"), USER_CATEGORIES)])
    for model in [Pipeline([("columns", bins), ("model", LogisticRegression(max_iter=500))]),
                  user_pipeline(HistGradientBoostingClassifier(max_iter=20), sparse_output=False)]:
        model.fit(frame(rows), labels["binary"])
        scorer = compile_scorer(model, version(FRAUD, "user", inputs=USER_INPUTS), FRAUD)
        assert scorer.path == "frame"
        assert_user_scores_equal(scorer, model, rows[:20] + edge_rows(rows)[:6], "binary")


def test_a_user_vector_holds_numbers_by_name_and_categories_one_hot(data):
    rows, labels = data
    model = user_pipeline(LogisticRegression(max_iter=500)).fit(frame(rows), labels["binary"])
    scorer = compile_scorer(model, version(FRAUD, "user", inputs=USER_INPUTS), FRAUD)
    vector = scorer.vector({"txn_count_1h": 3, "secs_since_last": None},
                           {"amount": 12.5, "merchant_category": "fuel", "country": "XX"})
    assert vector["amount"] == 12.5 and vector["txn_count_1h"] == 3.0 and vector["secs_since_last"] is None
    assert vector["merchant_category=fuel"] == 1.0 and vector["merchant_category=travel"] == 0.0
    assert not any(vector[f"country={c}"] for c in FRAUD.event.fields["country"].values)  # unknown: all 0
    assert not any(vector[f"channel={c}"] for c in FRAUD.event.fields["channel"].values)  # missing: all 0
    assert len(vector) == len(USER_NUMBERS) + 10 + 10 + 3


def test_an_input_the_spec_does_not_have_cannot_be_served(data):
    rows, labels = data
    model = user_pipeline(LogisticRegression(max_iter=500)).fit(frame(rows), labels["binary"])
    with pytest.raises(ScoringError, match="'bogus'"):
        compile_scorer(model, version(FRAUD, "user", inputs=USER_INPUTS[:-1] + ["bogus"]), FRAUD)


def test_a_fast_path_that_disagrees_with_the_model_is_not_used(data, monkeypatch, caplog):
    rows, labels = data
    model = trained(FRAUD, "logistic_regression", {"max_iter": 200}, rows, labels["binary"])
    logit = scoring._LinearScorer._logit
    monkeypatch.setattr(scoring._LinearScorer, "_logit", lambda self, values: logit(self, values) + 1e-6)
    scorer = compile_scorer(model, version(FRAUD, "logistic_regression"), FRAUD)
    assert scorer.path == "sklearn"
    assert "does not score as the model does" in caplog.text
    expected = model.predict_proba(Vectorizer(FRAUD).row(*rows[0])[None])[0, 1]
    assert close(scorer.score_one(*rows[0]).score, expected)


# ---------------------------------------------------------------- river

@dataclass
class Artifact:  # what an online version's artifact unpickles to (services/trainer OnlineArtifact)
    model: Any
    examples: int = 0


@pytest.mark.parametrize(("task", "algorithm"), [("binary", "logistic_regression"),
                                                 ("multiclass", "hoeffding_tree"),
                                                 ("regression", "linear_regression")])
def test_river_models_score_as_predict_one_river(data, task, algorithm):
    rows, labels = data
    spec = SPECS[task]
    v = Vectorizer(spec)
    model = build_model(ModelCandidate(name="m", library="river", algorithm=algorithm), spec)
    fresh = compile_scorer(Artifact(model), version(spec, algorithm, "river"), spec)
    first = fresh.score_one(*rows[0])  # learnt nothing yet
    if task == "binary":
        assert first == Scored(0.5, 1, None)
    elif task == "multiclass":
        assert (first.label, first.score) == ("low", 0.0)
        assert first.proba == dict.fromkeys(["low", "mid", "high"], 0.0)
    for (features, d), y in zip(rows[:600], labels[task]):
        model.learn_one(v.river_x(features, d), y)
    scorer = compile_scorer(Artifact(model), version(spec, algorithm, "river"), spec)
    assert scorer.path == "river"
    sample = rows[600:800] + edge_rows(rows)
    expected = predict(model, "river", task, [v.river_x(f, d) for f, d in sample], model_classes(spec))
    assert_scores_as(scorer, sample, expected)
    for features, d in sample[:20]:
        score, label, _ = predict_one_river(model, task, v.river_x(features, d))
        assert scorer.score_one(features, d)[:2] == (score, label)
    assert list(scorer.vector(*rows[0])) == v.columns
    bare = compile_scorer(model, version(spec, algorithm, "river"), spec)  # not wrapped in an artifact
    assert bare.score_one(*rows[0]) == scorer.score_one(*rows[0])


def test_a_river_model_must_take_the_spec_columns():
    model = build_model(ModelCandidate(name="m", library="river", algorithm="logistic_regression"), FRAUD)
    with pytest.raises(ScoringError):
        compile_scorer(model, version(FRAUD, "logistic_regression", "river", inputs=["amount"]), FRAUD)


# ---------------------------------------------------------------- threads and warm-up

def test_the_general_path_limits_openmp_in_the_thread_that_scores(data):
    from threadpoolctl import threadpool_info

    rows, labels = data
    model = trained(FRAUD, "hist_gradient_boosting", {"max_iter": 10}, rows[:500], labels["binary"][:500])
    scorer = compile_scorer(model, version(FRAUD, "hist_gradient_boosting"), FRAUD)
    seen: dict[str, Any] = {}

    def serve() -> None:
        warm_up(scorer, FRAUD)
        seen["openmp"] = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "openmp"]

    thread = threading.Thread(target=serve)
    thread.start()
    thread.join()
    assert seen["openmp"] and set(seen["openmp"]) == {1}
