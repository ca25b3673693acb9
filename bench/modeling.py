"""The model path's per-request and per-artifact costs (shared.modeling, shared.registry). No Kafka.

    .venv/bin/python -m bench.modeling [--rounds 5] [--calls 20000]

Per request (fraud spec, 37 input columns): `Vectorizer.row` (what serving calls for an sklearn
model) and `Vectorizer.river_x` (for a river model), side by side with scikit-learn's
DictVectorizer.transform of the same request as one dict (the peer: the stock per-dict encoder),
then one prediction of each kind of model on that row. Per artifact: size, `dump_model` and
`load_model` (digest and signature checked first) for a model fitted on 20,000 synthetic examples.
Figures are medians over the rounds; CPU time of this process only.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from bench.common import machine, table
from shared.modeling import Vectorizer, build_model, encode_label
from shared.registry import digest, dump_model, load_model, sign
from shared.spec import ModelCandidate
from tests.data import FRAUD, envelope, txn

KEY = b"bench-signing-key"


def per_call_us(fn, calls: int, rounds: int) -> float:
    """Median over rounds of the CPU microseconds per call."""
    out = []
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(calls):
            fn()
        out.append((time.process_time() - start) / calls * 1e6)
    return statistics.median(out)


def examples(n: int):
    rng = np.random.default_rng(0)
    names = [d.name for d in FRAUD.features.definitions]
    rows, labels = [], []
    for i in range(n):
        features = {name: float(rng.normal()) for name in names}
        data = envelope(txn(i, amount=round(float(rng.uniform(1, 500)), 2)))["data"]
        rows.append((features, data))
        labels.append(encode_label(FRAUD, bool(features["txn_count_10m"] + data["amount"] / 250 > 1.2)))
    return rows, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=20000)
    args = parser.parse_args()
    from sklearn.feature_extraction import DictVectorizer

    v = Vectorizer(FRAUD)
    rows, labels = examples(20000)
    features, data = rows[0]
    # The peer sees the same request as one flat dict: strings are one-hot encoded by DictVectorizer.
    def flat(f: dict, d: dict) -> dict:
        return {**f, **{k: d[k] for k in ("amount", "merchant_category", "country", "channel")}}

    peer = DictVectorizer(sparse=False).fit([flat(f, d) for f, d in rows[:2000]])
    encode = [
        ("Vectorizer.row", per_call_us(lambda: v.row(features, data), args.calls, args.rounds)),
        ("Vectorizer.river_x", per_call_us(lambda: v.river_x(features, data), args.calls, args.rounds)),
        ("peer: DictVectorizer.transform", per_call_us(lambda: peer.transform([flat(features, data)]),
                                                       args.calls // 10, args.rounds)),
    ]
    X = v.matrix(rows)
    xs = [v.river_x(f, d) for f, d in rows]
    models = {}
    for name, library, algorithm, params in [
        ("sklearn logistic_regression", "sklearn", "logistic_regression", {"max_iter": 500}),
        ("sklearn hist_gradient_boosting", "sklearn", "hist_gradient_boosting", {"max_iter": 200}),
        ("river logistic_regression", "river", "logistic_regression", {}),
        ("river adaptive_random_forest", "river", "adaptive_random_forest", {"n_models": 10}),
    ]:
        candidate = ModelCandidate(name="m", library=library, algorithm=algorithm, params=params)
        model = build_model(candidate, FRAUD)
        if library == "sklearn":
            model.fit(X, labels)
        else:
            for x, y in zip(xs[:5000], labels[:5000]):
                model.learn_one(x, y)
        models[name] = (library, model)
    row, x = X[:1], xs[0]
    predict = []
    for name, (library, model) in models.items():
        if library == "sklearn":
            call = lambda m=model: m.predict_proba(row)  # noqa: E731
        else:
            call = lambda m=model: m.predict_proba_one(x)  # noqa: E731
        predict.append((name, per_call_us(call, max(args.calls // 20, 100), args.rounds)))
    artifacts = []
    for name, (library, model) in models.items():
        data_ = dump_model(model, library)
        sha, sig = digest(data_), sign(data_, KEY)
        dump_ms = per_call_us(lambda m=model, lib=library: dump_model(m, lib), 5, args.rounds) / 1000
        def load(b: bytes = data_, lib: str = library, sha: str = sha, sig: str = sig) -> object:
            return load_model(b, lib, sha256=sha, signature=sig, key=KEY)
        load_ms = per_call_us(load, 5, args.rounds) / 1000
        artifacts.append((name, f"{len(data_) / 1024:,.0f}", f"{dump_ms:.1f}", f"{load_ms:.1f}"))
    print(f"bench.modeling on {machine()}; medians of {args.rounds} rounds, CPU time")
    print()
    print(table(["encode one fraud request", "us/call"], [(n, f"{us:.2f}") for n, us in encode]))
    print()
    print(table(["predict one row", "us/call"], [(n, f"{us:.1f}") for n, us in predict]))
    print()
    print(table(["artifact", "KiB", "dump ms", "verify+load ms"], artifacts))


if __name__ == "__main__":
    main()
