"""Scoring one request (shared.scoring): each path's µs per row next to the model's own predict. No Kafka.

    .venv/bin/python -m bench.scoring [--rounds 5] [--budget 0.2]

Models fitted on fraud training examples (tests/data.py): the trainer's pipelines (shared.modeling.
build_model) and a user's pipeline fitted on a pandas DataFrame (ColumnTransformer: SimpleImputer +
StandardScaler on amount and four features, OneHotEncoder on merchant_category / country / channel,
then the estimator), plus one with a step no fast path compiles (KBinsDiscretizer: the DataFrame
fallback). Per model:

- scorer: `Scorer.score_one(features, data)`, from the request's dicts to the Scored (encoding included);
  batch: `score_many` of 100 requests, per row.
- own, DataFrame: the model's predict_proba / predict on a one-row DataFrame built from the request,
  as a user writes it by hand (building the DataFrame included).
- own, numpy: the model's predict_proba / predict on a prepared 2-D float64 row (the trainer's models).
- max |diff|: the largest difference between the scorer and the model's own predict_proba / predict
  over 300 requests plus edge cases (missing everything, unknown categories, extreme values);
  relative where the expected value is above 1 (a regression's extreme request predicts ~1e9).

The models' own figures are measured first, before any scorer exists: scikit-learn's defaults (its
OpenMP threads included), not the scorer's one-thread limit. Medians over rounds of wall time per call.
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings
from typing import Any

import numpy as np
import pandas as pd

from bench.common import machine, table
from shared.events import ModelVersion
from shared.modeling import Vectorizer, build_model, encode_label, model_classes
from shared.scoring import compile_scorer, example_rows
from shared.spec import ModelCandidate, PipelineSpec, parse_spec
from tests.data import FRAUD, fraud_text, fraud_training_examples

MULTICLASS = parse_spec(fraud_text(label="multiclass", classes="[low, mid, high]"))
REGRESSION = parse_spec(fraud_text(label="regression"))
SPECS = {"binary": FRAUD, "multiclass": MULTICLASS, "regression": REGRESSION}
USER_NUMBERS = ["amount", "txn_count_1h", "amount_mean_24h", "amount_ratio_24h", "secs_since_last"]
USER_CATEGORIES = ["merchant_category", "country", "channel"]


def per_call_us(fn, budget: float, rounds: int) -> float:
    """Median over rounds of the wall microseconds per call; each round runs for about `budget` s."""
    start = time.perf_counter()
    fn()
    calls = max(5, int(budget / max(time.perf_counter() - start, 1e-7)))
    out = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        out.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(out)


def data() -> tuple[list[tuple[dict, dict]], dict[str, list]]:
    examples = fraud_training_examples(5000)
    rows = [(e["features"], e["data"]) for e in examples]
    signal = np.array([(f.get("txn_count_1h") or 0) + d["amount"] / 100 for f, d in rows])
    low, high = np.quantile(signal, [1 / 3, 2 / 3])
    return rows, {"binary": [encode_label(FRAUD, e["label"]) for e in examples],
                  "multiclass": ["low" if s < low else "mid" if s < high else "high" for s in signal],
                  "regression": [float(3 * s + 10) for s in signal]}


def user_frame(rows: list[tuple[dict, dict]]) -> pd.DataFrame:
    """The DataFrame a user builds by hand: numbers as floats (missing NaN), categories as sent."""
    records = [{**{n: f.get(n, d.get(n)) for n in USER_NUMBERS}, **{c: d.get(c) for c in USER_CATEGORIES}}
               for f, d in rows]
    return pd.DataFrame(records).astype({n: np.float64 for n in USER_NUMBERS})


def user_pipeline(estimator: Any, numeric: Any = None) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    numeric = numeric or StandardScaler()
    columns = ColumnTransformer([
        ("num", Pipeline([("impute", SimpleImputer()), ("scale", numeric)]), USER_NUMBERS),
        ("cat", OneHotEncoder(handle_unknown="ignore"), USER_CATEGORIES)])
    return Pipeline([("columns", columns), ("model", estimator)])


def version(spec: PipelineSpec, inputs: list[str]) -> ModelVersion:
    return ModelVersion.model_construct(name="bench", version=1, library="sklearn", algorithm="bench",
                                        task=spec.label.type, inputs=inputs, classes=model_classes(spec))


def models(rows, labels) -> list[tuple[str, str, Any, list[str]]]:
    """(name, task, fitted model, inputs) of every model measured."""
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.preprocessing import KBinsDiscretizer

    out = []
    X = Vectorizer(FRAUD).matrix(rows)
    columns = Vectorizer(FRAUD).columns
    for task, algorithm, params in [("binary", "logistic_regression", {"max_iter": 500}),
                                    ("multiclass", "logistic_regression", {"max_iter": 500}),
                                    ("regression", "ridge", {}),
                                    ("binary", "hist_gradient_boosting", {"max_iter": 200}),
                                    ("binary", "random_forest", {"n_estimators": 100})]:
        candidate = ModelCandidate(name="m", library="sklearn", algorithm=algorithm, params=params)
        model = build_model(candidate, SPECS[task]).fit(X, labels[task])
        out.append((f"trainer {algorithm}", task, model, columns))
    frame = user_frame(rows)
    inputs = USER_NUMBERS + USER_CATEGORIES
    for task, estimator in [("binary", LogisticRegression(max_iter=500)),
                            ("multiclass", LogisticRegression(max_iter=500)), ("regression", Ridge())]:
        model = user_pipeline(estimator).fit(frame, labels[task])
        out.append((f"user {type(estimator).__name__}", task, model, inputs))
    bins = user_pipeline(LogisticRegression(max_iter=500), KBinsDiscretizer(n_bins=5))
    out.append(("user KBins + LogisticRegression", "binary", bins.fit(frame, labels["binary"]), inputs))
    return out


def own(model: Any, task: str) -> Any:
    """The model's own scores: P(positive), the class probabilities, or the prediction."""
    if task == "regression":
        return model.predict
    if task == "binary":
        return lambda X: model.predict_proba(X)[:, list(model.classes_).index(1)]
    return model.predict_proba


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--budget", type=float, default=0.2, help="seconds per round of one measurement")
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # sklearn's "X has feature names" for a DataFrame to the trainer's models
    rows, labels = data()
    fitted = models(rows[:4000], {task: values[:4000] for task, values in labels.items()})
    v = Vectorizer(FRAUD)
    f, d = rows[4500]
    sample = rows[4000:4300] + [({}, {}), (f, {**d, "merchant_category": "unknown", "country": "XX"}),
                                (dict.fromkeys(f, 1e9), {**d, "amount": 50000.0})] + example_rows(FRAUD, 20)
    results = {}
    for name, task, model, inputs in fitted:  # the models' own, before any scorer limits threads
        predict = own(model, task)
        user = inputs != v.columns
        by_hand = (lambda: predict(user_frame([(f, d)]))) if user else (
            lambda: predict(pd.DataFrame([dict(zip(v.columns, v.row(f, d)))])))
        numpy_row = None if user else v.row(f, d)[None]
        results[name, task] = [per_call_us(by_hand, args.budget, args.rounds),
                         None if numpy_row is None else per_call_us(lambda: predict(numpy_row), args.budget,
                                                                    args.rounds)]
    out = []
    for name, task, model, inputs in fitted:
        spec = SPECS[task]
        scorer = compile_scorer(model, version(spec, inputs), spec)
        one = per_call_us(lambda: scorer.score_one(f, d), args.budget, args.rounds)
        batch = rows[4000:4100]
        many = per_call_us(lambda: scorer.score_many(batch), args.budget, args.rounds) / len(batch)
        expected = own(model, task)(user_frame(sample) if inputs != v.columns else v.matrix(sample))
        got = scorer.score_many(sample)
        if task == "multiclass":
            classes = [str(c) for c in model.classes_]
            got = np.array([[s.proba[c] for c in classes] for s in got])
        else:
            got = np.array([s.score for s in got])
        # relative above 1: a regression's extreme request predicts ~1e9
        diff = float(np.max(np.abs(got - expected) / np.maximum(1.0, np.abs(expected))))
        frame_us, numpy_us = results[name, task]
        out.append((name, task, scorer.path, f"{one:.1f}", f"{many:.1f}", f"{frame_us:.0f}",
                    "-" if numpy_us is None else f"{numpy_us:.0f}", f"{diff:.1e}"))
    print(f"bench.scoring on {machine()}; medians of {args.rounds} rounds, wall time per row")
    print()
    print(table(["model", "label", "path", "scorer us", "batch us/row", "own DataFrame us", "own numpy us",
                 "max |diff|"], out))
    river_rows(rows, labels, args)


def river_rows(rows, labels, args) -> None:
    from shared.modeling import predict_one_river

    v = Vectorizer(FRAUD)
    out = []
    for algorithm in ("logistic_regression", "adaptive_random_forest"):
        model = build_model(ModelCandidate(name="m", library="river", algorithm=algorithm), FRAUD)
        for (features, data_), y in zip(rows[:3000], labels["binary"]):
            model.learn_one(v.river_x(features, data_), y)
        ver = ModelVersion.model_construct(name="bench", version=1, library="river", algorithm=algorithm,
                                           task="binary", inputs=v.columns, classes=model_classes(FRAUD))
        scorer = compile_scorer(model, ver, FRAUD)
        f, d = rows[4500]
        x = v.river_x(f, d)
        diff = max(abs(scorer.score_one(a, b).score - predict_one_river(model, "binary", v.river_x(a, b))[0])
                   for a, b in rows[4000:4300])
        scorer_us = per_call_us(lambda: scorer.score_one(f, d), args.budget, args.rounds)
        own_us = per_call_us(lambda: model.predict_proba_one(x), args.budget, args.rounds)
        out.append((f"river {algorithm}", scorer.path, f"{scorer_us:.1f}", f"{own_us:.1f}", f"{diff:.1e}"))
    print()
    # the scorer's figure includes Vectorizer.river_x from the request's dicts; the model's does not
    print(table(["model", "path", "scorer us", "own predict_proba_one(x) us", "max |diff|"], out))


if __name__ == "__main__":
    main()
