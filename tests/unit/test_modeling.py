"""shared.modeling: the input encoding, models for every label type, metrics against scikit-learn and
river's own, the promotion gate, and reference statistics on data whose answers are known."""
from __future__ import annotations

import json
import math
from datetime import datetime, timezone

import numpy as np
import pytest
from river import metrics as rm
from sklearn import metrics as skm

from shared.errors import SpecError
from shared.modeling import (
    SEED,
    Predictions,
    PrequentialMetrics,
    Vectorizer,
    beats,
    bin_counts,
    build_model,
    constructor_params,
    encode_label,
    holdout_metrics,
    meets_minimum,
    model_classes,
    predict,
    predict_one_river,
    quantile_edges,
    reference_statistics,
)
from shared.spec import ALGORITHMS, ModelCandidate, PipelineSpec, parse_spec
from tests.data import FRAUD, envelope, fraud_text, txn

CLASSES = ["low", "mid", "high"]


def _edit(text: str, *pairs: tuple[str, str]) -> str:
    for old, new in pairs:
        assert old in text, old
        text = text.replace(old, new, 1)
    return text


BINARY = parse_spec(_edit(fraud_text(), ("report: [pr_auc, log_loss, recall, precision]",
                                         "report: [pr_auc, log_loss, recall, precision, accuracy, f1]")))
MULTICLASS = parse_spec(_edit(fraud_text(label="multiclass", classes="[low, mid, high]"),
                              ("report: []", "report: [log_loss, macro_f1]")))
REGRESSION = parse_spec(_edit(fraud_text(label="regression"), ("report: []", "report: [rmse, r2]"),
                              ("minimum: 0.75", "minimum: 12.5"), ("margin: 0.005", "margin: 0.5")))
SPECS = {"binary": BINARY, "multiclass": MULTICLASS, "regression": REGRESSION}
# Extra field types the fraud spec lacks: bool, int, a second timestamp, free text, numeric categories.
EXTRA = parse_spec(_edit(fraud_text(), ("    ts: {type: timestamp}\n", (
    "    ts: {type: timestamp}\n"
    "    card_present: {type: bool, required: false}\n"
    "    items: {type: int, required: false}\n"
    "    note: {type: string, required: false}\n"
    "    opened: {type: timestamp, required: false}\n"
    "    tier: {type: category, values: [1, 2, 3], required: false}\n"))))

FEATURES = [d.name for d in FRAUD.features.definitions]
ONE_HOT = ([f"merchant_category={v}" for v in FRAUD.event.fields["merchant_category"].values]
           + [f"country={v}" for v in FRAUD.event.fields["country"].values]
           + [f"channel={v}" for v in FRAUD.event.fields["channel"].values])


def dataset(spec: PipelineSpec, n: int, seed: int = 0):
    """n (features, data) pairs with labels of the spec's type that depend on txn_count_10m and amount."""
    rng = np.random.default_rng(seed)
    rows, labels = [], []
    for i in range(n):
        features = {name: float(rng.normal()) for name in FEATURES}
        if i % 10 == 0:
            features["amount_std_24h"] = None  # missing values reach every model
        features["country_distinct_24h"] = None  # and a column without any value (see DropEmptyColumns)
        amount = float(rng.uniform(1, 500))
        country = FRAUD.event.fields["country"].values[i % 10]
        data = envelope(txn(i, amount=round(amount, 2), country=country))["data"]
        signal = features["txn_count_10m"] + (amount - 250) / 100 + rng.normal(scale=0.3)
        rows.append((features, data))
        if spec.label.type == "binary":
            labels.append(signal > 0)  # labels arrive as booleans
        elif spec.label.type == "multiclass":
            labels.append(CLASSES[0] if signal < -0.7 else CLASSES[1] if signal < 0.7 else CLASSES[2])
        else:
            labels.append(3.0 * signal + 10)
    return rows, [encode_label(spec, v) for v in labels]


# ---------------------------------------------------------------- Vectorizer

def test_fraud_columns_are_the_features_then_amount_then_one_hot_categories():
    v = Vectorizer(FRAUD)
    assert v.columns == [*FEATURES, "amount", *ONE_HOT]
    assert len(v.columns) == 13 + 1 + 10 + 10 + 3
    assert "user_id" not in v.columns and "ts" not in v.columns  # entity key and time field
    assert v.groups["channel"] == [("pos", 34), ("web", 35), ("app", 36)]


def test_row_encodes_values_one_hot_and_missing():
    v = Vectorizer(FRAUD)
    features = dict.fromkeys(FEATURES, 2)
    features["last_amount"] = None
    del features["secs_since_last"]
    data = envelope(txn(amount=12.5, merchant_category="fuel", country="FR", channel="app"))["data"]
    row = v.row(features, data)
    assert row.dtype == np.float64 and row.shape == (37,)
    expected = {c: 0.0 for c in ONE_HOT} | dict.fromkeys(FEATURES, 2.0) | {
        "amount": 12.5, "merchant_category=fuel": 1.0, "country=FR": 1.0, "channel=app": 1.0}
    for column, value in zip(v.columns, row):
        if column in ("last_amount", "secs_since_last"):
            assert math.isnan(value), column
        else:
            assert value == expected[column], column
    # an unknown or missing category value is all zeros; a missing numeric field is NaN
    row = v.row({}, {"country": "XX", "channel": None})
    assert np.isnan(row[:14]).all() and (row[14:] == 0).all()


def test_other_field_types_bool_int_timestamp_numeric_category_and_no_strings():
    v = Vectorizer(EXTRA)
    assert v.columns[-7:] == ["channel=app", "card_present", "items", "opened", "tier=1", "tier=2", "tier=3"]
    assert "note" not in v.columns and "ts" not in v.columns
    assert v.bools == {v.columns.index("card_present")}
    data = {"card_present": True, "items": 3, "opened": "2026-01-01T00:00:00Z", "tier": "2", "note": "hi"}
    row = dict(zip(v.columns, v.row({}, data)))
    assert (row["card_present"], row["items"]) == (1.0, 3.0)
    assert row["opened"] == datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp() == 1767225600.0
    assert (row["tier=1"], row["tier=2"], row["tier=3"]) == (0.0, 1.0, 0.0)
    # a number matches its text, a datetime its epoch seconds, False is 0
    row = dict(zip(v.columns, v.row({}, {"tier": 3, "opened": datetime(2026, 1, 1), "card_present": False})))
    assert (row["tier=3"], row["opened"], row["card_present"]) == (1.0, 1767225600.0, 0.0)
    row = dict(zip(v.columns, v.row({}, {})))
    assert math.isnan(row["card_present"]) and math.isnan(row["items"]) and math.isnan(row["opened"])


def test_river_x_is_row_without_the_missing_values():
    v = Vectorizer(EXTRA)
    rows, _ = dataset(FRAUD, 50)
    rows.append(({}, {"card_present": False, "items": 0, "tier": 1}))
    for features, data in rows:
        x = v.river_x(features, data)
        row = v.row(features, data)
        assert x == {c: float(r) for c, r in zip(v.columns, row) if not math.isnan(r)}
        assert all(type(value) is float for value in x.values())
    assert "amount_std_24h" not in v.river_x(*rows[0])  # None there
    matrix = v.matrix(rows)
    assert matrix.shape == (51, len(v.columns))
    np.testing.assert_array_equal(matrix[7], v.row(*rows[7]))
    assert v.matrix([]).shape == (0, len(v.columns))


def test_encode_label_per_type():
    assert (encode_label(FRAUD, True), encode_label(FRAUD, False), encode_label(FRAUD, 1)) == (1, 0, 1)
    named = parse_spec(fraud_text(classes="[declined, approved]"))
    assert (encode_label(named, "approved"), encode_label(named, "declined")) == (1, 0)
    assert encode_label(MULTICLASS, "mid") == "mid"
    assert encode_label(parse_spec(fraud_text(label="multiclass", classes="[0, 1, 2]")), 2) == "2"
    assert encode_label(REGRESSION, 3) == 3.0 and type(encode_label(REGRESSION, 3)) is float
    bad_labels = [(FRAUD, 2), (FRAUD, "yes"), (MULTICLASS, "huge"), (REGRESSION, True), (REGRESSION, "1")]
    for spec, bad in bad_labels:
        with pytest.raises(ValueError):
            encode_label(spec, bad)


# ---------------------------------------------------------------- models

# Small models keep the test fast; the rest of each estimator's params are its defaults.
FAST = {"random_forest": {"n_estimators": 10}, "hist_gradient_boosting": {"max_iter": 30},
        "adaptive_random_forest": {"n_models": 3}, "adaptive_random_forest_regressor": {"n_models": 3}}
ALL = [(task, library, algorithm) for task in SPECS for library, algorithms in ALGORITHMS.items()
       for algorithm, tasks in algorithms.items() if task in tasks]


def fit(spec: PipelineSpec, library: str, algorithm: str, rows, y):
    candidate = ModelCandidate(name="m", library=library, algorithm=algorithm, params=FAST.get(algorithm, {}))
    model = build_model(candidate, spec)
    v = Vectorizer(spec)
    if library == "sklearn":
        model.fit(v.matrix(rows), y)
    else:
        for (features, data), target in zip(rows, y):
            model.learn_one(v.river_x(features, data), target)
    return model


def inputs(spec: PipelineSpec, library: str, rows):
    v = Vectorizer(spec)
    return v.matrix(rows) if library == "sklearn" else [v.river_x(f, d) for f, d in rows]


@pytest.mark.parametrize("task, library, algorithm", ALL)
def test_every_allowed_algorithm_learns_and_predicts_in_shape(task, library, algorithm):
    spec = SPECS[task]
    rows, y = dataset(spec, 400)
    test_rows, test_y = dataset(spec, 100, seed=1)
    model = fit(spec, library, algorithm, rows, y)
    p = predict(model, library, task, inputs(spec, library, test_rows), classes=model_classes(spec))
    assert p.scores.shape == p.labels.shape == (100,) and np.isfinite(p.scores).all()
    metrics = holdout_metrics(spec, test_y, p)
    if task == "binary":
        assert set(np.unique(p.labels)) <= {0, 1} and ((p.scores >= 0) & (p.scores <= 1)).all()
        np.testing.assert_array_equal(p.labels, (p.scores >= 0.5).astype(int))
        assert p.proba is None
        assert metrics["roc_auc"] > 0.75, metrics  # the signal is learnable by every model
    elif task == "multiclass":
        assert p.classes == CLASSES and p.proba.shape == (100, 3)
        np.testing.assert_allclose(p.proba.sum(axis=1), 1.0, atol=1e-6)
        assert set(p.labels) <= set(CLASSES)
        np.testing.assert_array_equal(p.scores, p.proba.max(axis=1))
        assert metrics["accuracy"] > 0.55, metrics  # chance is about 1/3
    else:
        assert p.proba is None and p.labels.dtype == np.float64
        np.testing.assert_array_equal(p.scores, p.labels)
        assert metrics["r2"] > 0.3, metrics  # a constant prediction scores about 0


def test_build_model_shapes_seeds_and_params():
    lr = build_model(ModelCandidate(name="a", library="sklearn", algorithm="logistic_regression",
                                    params={"C": 0.5}), FRAUD)
    assert [name for name, _ in lr.steps] == ["impute", "scale", "model"]
    assert lr.named_steps["impute"].strategy == "median" and lr.named_steps["impute"].keep_empty_features
    assert (lr.named_steps["model"].C, lr.named_steps["model"].random_state) == (0.5, SEED)
    gbm = build_model(ModelCandidate(name="b", library="sklearn", algorithm="hist_gradient_boosting",
                                     params={"random_state": 7}), FRAUD)
    assert [type(step).__name__ for _, step in gbm.steps] == ["DropEmptyColumns",
                                                              "HistGradientBoostingClassifier"]
    assert gbm.named_steps["model"].random_state == 7  # the candidate's params win
    forest = build_model(ModelCandidate(name="rf", library="sklearn", algorithm="random_forest"), REGRESSION)
    assert type(forest).__name__ == "RandomForestRegressor" and forest.random_state == SEED
    river_lr = build_model(ModelCandidate(name="c", library="river", algorithm="logistic_regression"), FRAUD)
    assert [type(s).__name__ for s in river_lr.steps.values()] == ["StandardScaler", "LogisticRegression"]
    arf = ModelCandidate(name="d", library="river", algorithm="adaptive_random_forest")
    assert constructor_params(arf, FRAUD) == {"seed": SEED}
    assert type(build_model(arf, FRAUD)).__name__ == "ARFClassifier"  # forests take raw features
    tree = ModelCandidate(name="e", library="river", algorithm="hoeffding_tree", params={"grace_period": 50})
    assert constructor_params(tree, FRAUD) == {"grace_period": 50}  # it takes no seed
    with pytest.raises(SpecError, match="bad params"):
        build_model(ModelCandidate(name="f", library="river", algorithm="hoeffding_tree",
                                   params={"nope": 1}), FRAUD)
    with pytest.raises(SpecError, match="does not fit a regression label"):
        build_model(ModelCandidate(name="g", library="sklearn", algorithm="logistic_regression"), REGRESSION)


@pytest.mark.parametrize("library, algorithm",
                         [("sklearn", "random_forest"), ("river", "adaptive_random_forest")])
def test_models_are_deterministic_by_default(library, algorithm):
    rows, y = dataset(BINARY, 300)
    first, second = (predict(fit(BINARY, library, algorithm, rows, y), library, "binary",
                             inputs(BINARY, library, rows[:50])) for _ in range(2))
    np.testing.assert_array_equal(first.scores, second.scores)


def test_predict_one_river_before_learning_and_multiclass_alignment():
    v = Vectorizer(MULTICLASS)
    x = v.river_x(*dataset(MULTICLASS, 1)[0][0])
    tree = build_model(ModelCandidate(name="t", library="river", algorithm="hoeffding_tree"), MULTICLASS)
    assert predict_one_river(tree, "multiclass", x) == (0.0, None, {})
    blank = predict(tree, "river", "multiclass", [x], classes=CLASSES)
    assert list(blank.labels) == ["low"] and blank.proba.tolist() == [[0.0, 0.0, 0.0]]  # labels stay names
    binary = build_model(ModelCandidate(name="t", library="river", algorithm="hoeffding_tree"), BINARY)
    assert predict_one_river(binary, "binary", x) == (0.5, 1, {0: 0.5, 1: 0.5})
    tree.learn_one(x, "mid")
    assert predict_one_river(tree, "multiclass", x) == (1.0, "mid", {"mid": 1.0})
    p = predict(tree, "river", "multiclass", [x, x], classes=CLASSES)
    np.testing.assert_array_equal(p.proba, [[0.0, 1.0, 0.0]] * 2)  # unseen classes get 0
    assert list(p.labels) == ["mid", "mid"] and p.classes == CLASSES
    assert predict(tree, "river", "multiclass", [x]).classes == ["mid"]  # the model's own classes


def test_model_classes():
    assert model_classes(FRAUD) == ["false", "true"]
    assert model_classes(parse_spec(fraud_text(classes="[declined, approved]"))) == ["declined", "approved"]
    assert model_classes(MULTICLASS) == CLASSES and model_classes(REGRESSION) is None


# ---------------------------------------------------------------- metrics

Y_BIN = np.array([0, 0, 1, 1, 0, 1, 0, 1, 1, 0])
SCORES = np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.9, 0.6, 0.55, 0.3, 0.05])


def binary_predictions(scores=SCORES) -> Predictions:
    return Predictions(scores, (scores >= 0.5).astype(int))


def test_binary_holdout_metrics_equal_sklearn():
    labels = (SCORES >= 0.5).astype(int)
    assert holdout_metrics(BINARY, Y_BIN, binary_predictions()) == {
        "roc_auc": skm.roc_auc_score(Y_BIN, SCORES),
        "pr_auc": skm.average_precision_score(Y_BIN, SCORES),
        "log_loss": skm.log_loss(Y_BIN, SCORES),
        "recall": skm.recall_score(Y_BIN, labels),
        "precision": skm.precision_score(Y_BIN, labels),
        "accuracy": skm.accuracy_score(Y_BIN, labels),
        "f1": skm.f1_score(Y_BIN, labels),
    }
    assert holdout_metrics(BINARY, Y_BIN, binary_predictions())["accuracy"] == 0.7


def _sklearn_binary(y, scores) -> dict[str, float]:
    labels = (scores >= 0.5).astype(int)
    with np.errstate(all="ignore"), __import__("warnings").catch_warnings():
        __import__("warnings").simplefilter("ignore")
        out = {"log_loss": skm.log_loss(y, scores, labels=[0, 1]), "accuracy": skm.accuracy_score(y, labels),
               "precision": skm.precision_score(y, labels, zero_division=np.nan),
               "recall": skm.recall_score(y, labels, zero_division=np.nan),
               "f1": skm.f1_score(y, labels, zero_division=np.nan)}
        if len(set(y)) == 2:
            out |= {"roc_auc": skm.roc_auc_score(y, scores), "pr_auc": skm.average_precision_score(y, scores)}
    return {k: float(v) for k, v in out.items() if math.isfinite(v)}


@pytest.mark.parametrize("seed", range(12))
def test_binary_metrics_in_numpy_equal_sklearn_on_random_holdouts_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 3000))
    y = (rng.random(n) < rng.choice([0.0, 0.02, 0.3, 0.5, 1.0])).astype(int)
    scores = rng.random(n)
    if seed % 3 == 0:  # coarse scores: many ties, across classes too
        scores = np.round(scores, 1)
    if seed % 4 == 1:  # the extremes log_loss clips
        scores[: n // 3] = rng.choice([0.0, 1.0], n // 3)
    got = holdout_metrics(BINARY, y, binary_predictions(scores))
    want = _sklearn_binary(y, scores)
    assert set(got) == set(want)
    for name, value in want.items():
        assert got[name] == pytest.approx(value, rel=1e-12, abs=1e-15), name


def test_metrics_that_cannot_be_computed_are_left_out():
    ones = np.ones(4, dtype=int)
    got = holdout_metrics(BINARY, ones, binary_predictions(np.array([0.9, 0.2, 0.7, 0.4])))
    assert set(got) == {"log_loss", "recall", "precision", "accuracy", "f1"}  # one class: no AUCs
    assert got["recall"] == 0.5
    nothing_predicted = holdout_metrics(BINARY, Y_BIN, binary_predictions(np.full(10, 0.1)))
    assert "precision" not in nothing_predicted and nothing_predicted["recall"] == 0.0
    assert holdout_metrics(BINARY, [], binary_predictions(np.zeros(0))) == {}
    one = holdout_metrics(REGRESSION, [3.0], Predictions(np.array([2.0]), np.array([2.0])))
    assert one == {"mae": 1.0, "rmse": 1.0}  # r2 of one example is undefined


def test_multiclass_holdout_metrics_equal_sklearn():
    y = np.array(["low", "mid", "high", "mid", "low", "high"], dtype=object)
    # the model knew only two classes, in its own order: 'high' gets probability 0
    proba = np.array([[0.3, 0.7], [0.6, 0.4], [0.5, 0.5], [0.9, 0.1], [0.2, 0.8], [0.45, 0.55]])
    p = Predictions(proba.max(axis=1), np.array(["mid", "low", "mid", "mid", "low", "low"], dtype=object),
                    proba, ["mid", "low"])
    got = holdout_metrics(MULTICLASS, y, p)
    assert got == {
        "accuracy": skm.accuracy_score(y, p.labels),
        # sklearn wants the columns in sorted label order: high, low, mid
        "log_loss": skm.log_loss(y, np.column_stack([np.zeros(6), proba[:, 1], proba[:, 0]]),
                                 labels=["high", "low", "mid"]),
        "macro_f1": skm.f1_score(y, p.labels, average="macro"),
    }
    assert got["accuracy"] == 2 / 6
    # by hand: the mean of -log P(true class), P(high) = 0 clipped to float64's eps
    p_true = [0.7, 0.6, np.finfo(np.float64).eps, 0.9, 0.8, np.finfo(np.float64).eps]
    assert got["log_loss"] == pytest.approx(-np.mean(np.log(p_true)))


def test_regression_holdout_metrics_equal_sklearn():
    y = np.array([10.0, 12.0, 9.5, 20.0, 15.0])
    pred = np.array([11.0, 12.5, 9.0, 17.0, 15.5])
    assert holdout_metrics(REGRESSION, y, Predictions(pred, pred)) == {
        "mae": skm.mean_absolute_error(y, pred),
        "rmse": skm.root_mean_squared_error(y, pred),
        "r2": skm.r2_score(y, pred),
    }


def test_prequential_binary_equals_river_metrics_fed_in_the_same_order():
    ours = PrequentialMetrics(BINARY)
    assert ours.values() == {}
    theirs = {"roc_auc": rm.ROCAUC(), "log_loss": rm.LogLoss(), "recall": rm.Recall(),
              "precision": rm.Precision(), "accuracy": rm.Accuracy(), "f1": rm.F1()}
    for y, score in zip(Y_BIN, SCORES):
        ours.update(int(y), float(score), int(score >= 0.5), {0: 1 - score, 1: score})
        for name, metric in theirs.items():
            metric.update(bool(y), float(score) if name in ("roc_auc", "log_loss") else bool(score >= 0.5))
    assert ours.values() == {name: metric.get() for name, metric in theirs.items()}  # no pr_auc
    assert ours.values()["accuracy"] == 0.7


def test_prequential_multiclass_and_regression_equal_river_metrics():
    ours, ce, acc, mf1 = PrequentialMetrics(MULTICLASS), rm.CrossEntropy(), rm.Accuracy(), rm.MacroF1()
    stream = [("low", {"low": 0.7, "mid": 0.3}), ("mid", {"low": 0.6, "mid": 0.4}),
              ("high", {"high": 0.5, "mid": 0.5}), ("mid", {}),
              ("low", {"low": 0.2, "mid": 0.3, "high": 0.5})]
    for y, proba in stream:
        label = max(proba, key=proba.get) if proba else None
        ours.update(y, max(proba.values(), default=0.0), label, proba)
        ce.update(y, proba), acc.update(y, label), mf1.update(y, label)
    assert ours.values() == {"accuracy": acc.get(), "log_loss": ce.get(), "macro_f1": mf1.get()}
    assert ours.values()["accuracy"] == 0.4  # low, high right; mid, (nothing), high wrong
    ours, mae, rmse, r2 = PrequentialMetrics(REGRESSION), rm.MAE(), rm.RMSE(), rm.R2()
    for y, pred in [(10.0, 11.0), (12.0, 12.5), (9.5, 9.0), (20.0, 17.0)]:
        ours.update(y, pred, pred, {})
        mae.update(y, pred), rmse.update(y, pred), r2.update(y, pred)
    assert ours.values() == {"mae": mae.get(), "rmse": rmse.get(), "r2": r2.get()}
    assert ours.values()["mae"] == 1.25


def test_prequential_with_a_river_model_test_then_train():
    rows, y = dataset(BINARY, 300)
    v = Vectorizer(BINARY)
    model = build_model(ModelCandidate(name="m", library="river", algorithm="logistic_regression"), BINARY)
    ours, auc = PrequentialMetrics(BINARY), rm.ROCAUC()
    for (features, data), target in zip(rows, y):
        x = v.river_x(features, data)
        score, label, proba = predict_one_river(model, "binary", x)
        ours.update(target, score, label, proba)
        auc.update(bool(target), model.predict_proba_one(x)[True])
        model.learn_one(x, target)
    assert ours.values()["roc_auc"] == auc.get() > 0.8


def test_gate_for_a_score_and_a_loss():
    # roc_auc: minimum 0.75 is a floor, margin 0.005
    assert meets_minimum(FRAUD, 0.75) and not meets_minimum(FRAUD, 0.7499)
    assert beats(FRAUD, 0.805, 0.8) and not beats(FRAUD, 0.804, 0.8) and not beats(FRAUD, 0.79, 0.8)
    assert beats(FRAUD, 0.5, None)
    # mae: minimum 12.5 is a ceiling, margin 0.5 downwards
    assert meets_minimum(REGRESSION, 12.5) and meets_minimum(REGRESSION, 3.0)
    assert not meets_minimum(REGRESSION, 12.6)
    assert beats(REGRESSION, 11.9, 12.5) and beats(REGRESSION, 12.0, 12.5)
    assert not beats(REGRESSION, 12.1, 12.5) and not beats(REGRESSION, 13.0, 12.5)
    # no minimum: always met; margin 0: a tie keeps the champion
    free = parse_spec(_edit(fraud_text(), ("  minimum: 0.75\n", ""), ("margin: 0.005", "margin: 0")))
    assert meets_minimum(free, 0.0)
    assert not beats(free, 0.8, 0.8) and beats(free, 0.8001, 0.8)


# ---------------------------------------------------------------- reference statistics

def test_bins_are_closed_on_the_left_and_the_last_on_both_sides():
    assert bin_counts([0.0, 10.0, 20.0], np.array([-1, 0, 5, 10, 20, 21, np.nan])) == [1, 2, 2, 1]
    assert quantile_edges(np.arange(100.0)) == pytest.approx([0, 9.9, 19.8, 29.7, 39.6, 49.5, 59.4, 69.3,
                                                             79.2, 89.1, 99])
    assert quantile_edges(np.array([3.0, 3.0, np.nan])) == [3.0, 3.0]
    assert bin_counts([3.0, 3.0], np.array([2.0, 3.0, 3.0, 4.0])) == [1, 2, 1]
    assert quantile_edges(np.array([np.nan])) == [] and bin_counts([], np.array([1.0])) == []
    assert quantile_edges(np.array([0, 0, 0, 0, 1.0])) == pytest.approx([0.0, 0.2, 0.6, 1.0])  # deduplicated


def test_reference_statistics_on_known_data():
    v = Vectorizer(EXTRA)
    countries = ["DE"] * 50 + ["FR"] * 30 + [None] * 15 + ["XX"] * 5  # XX: not in the spec
    rows = []
    for i in range(100):
        data = {"amount": float(i), "country": countries[i], "channel": "web",
                "card_present": (i % 4 == 0) if i < 80 else None}
        rows.append(({"txn_count_1h": 3}, data))
    X = v.matrix(rows)
    y = [1] * 25 + [0] * 75
    scores = np.arange(50) / 50
    ref = reference_statistics(v, X, y, Predictions(scores, (scores >= 0.5).astype(int)))
    json.dumps(ref, allow_nan=False)  # JSON-ready
    assert (ref["rows"], ref["holdout_rows"]) == (100, 50)
    amount = ref["features"]["amount"]
    assert amount["kind"] == "numeric" and amount["edges"] == pytest.approx(quantile_edges(np.arange(100.0)))
    assert amount["counts"] == [0] + [10] * 10 + [0]
    assert amount["missing"] == 0.0 and amount["mean"] == 49.5
    assert amount["std"] == pytest.approx(math.sqrt((100 ** 2 - 1) / 12))
    assert ref["features"]["txn_count_1h"] == {"kind": "numeric", "edges": [3.0, 3.0], "counts": [0, 100, 0],
                                               "missing": 0.0, "mean": 3.0, "std": 0.0}
    assert ref["features"]["txn_count_10m"] == {"kind": "numeric", "edges": [], "counts": [], "missing": 1.0,
                                                "mean": None, "std": None}
    country = ref["features"]["country"]
    assert country["kind"] == "category" and country["missing"] == 0.2
    others = ["ES", "IT", "NL", "PL", "GB", "US", "BR", "NG"]
    assert country["frequencies"] == {"DE": 0.5, "FR": 0.3, **dict.fromkeys(others, 0.0)}
    assert ref["features"]["channel"]["frequencies"] == {"pos": 0.0, "web": 1.0, "app": 0.0}
    assert ref["features"]["card_present"] == {"kind": "category", "frequencies": {"false": 0.6, "true": 0.2},
                                               "missing": 0.2}
    assert "country=DE" not in ref["features"] and "note" not in ref["features"]
    assert ref["label"] == {"kind": "binary", "rate": 0.25}
    score_counts = ref["scores"]["counts"]
    assert sum(score_counts) == 50 and score_counts[0] == score_counts[-1] == 0
    assert ref["scores"]["edges"][0] == 0.0 and ref["scores"]["edges"][-1] == 0.98


def test_reference_label_statistics_for_multiclass_and_regression():
    v = Vectorizer(MULTICLASS)
    X = v.matrix([({}, {})] * 4)
    empty = Predictions(np.zeros(0), np.zeros(0))
    assert reference_statistics(v, X, ["low", "low", "high", "mid"], empty)["label"] == {
        "kind": "category", "frequencies": {"low": 0.5, "mid": 0.25, "high": 0.25}}
    v = Vectorizer(REGRESSION)
    ref = reference_statistics(v, v.matrix([({}, {})] * 5), [1.0, 2.0, 3.0, 4.0, 5.0], empty)
    assert ref["label"]["kind"] == "numeric" and ref["label"]["mean"] == 3.0
    assert ref["label"]["edges"] == pytest.approx([1.0, 1.4, 1.8, 2.2, 2.6, 3.0, 3.4, 3.8, 4.2, 4.6, 5.0])
    assert ref["label"]["counts"] == [0, 1, 0, 1, 0, 0, 1, 0, 1, 0, 1, 0]
    assert ref["scores"] == {"edges": [], "counts": []}



def test_reference_bins_equal_numpys_quantiles_and_a_count_per_value():
    from shared.modeling import DECILES, bin_counts, quantile_bins, quantile_edges

    rng = np.random.default_rng(12)
    samples = [rng.normal(size=300) * 1e6, rng.integers(-3, 3, size=50).astype(float), rng.exponential(size=7),
               np.full(9, 2.5), np.array([np.nan, np.inf, -np.inf, 1.0, 2.0, 2.0, 3.0])]
    for x in samples:
        finite = x[np.isfinite(x)]
        expected = np.unique(np.quantile(finite, DECILES))
        expected = np.repeat(expected, 2) if expected.size == 1 else expected
        edges = quantile_edges(x)
        assert edges == [float(e) for e in expected]
        e = np.asarray(edges)
        live = np.append(rng.normal(size=100) * 3, [np.nan, e[0], e[-1], e[-1], np.inf, -np.inf])
        for values in (x, live):
            present = values[~np.isnan(values)]
            naive = [int((present < e[0]).sum())] + [int(((present >= lo) & (present < hi)).sum())
                                                     for lo, hi in zip(e[:-2], e[1:-1])]
            naive += [int(((present >= e[-2]) & (present <= e[-1])).sum()), int((present > e[-1]).sum())]
            assert bin_counts(edges, values) == naive
        assert quantile_bins(x) == (edges, bin_counts(edges, x))
