"""The trainer's domain without a broker: decoding, the window, the holdout split, the gate, online
learning with checkpoint offsets, and registry records."""
from __future__ import annotations

import re
from datetime import datetime, timezone

import numpy as np
import pytest

from services.trainer.config import TrainerSettings
from services.trainer.domain import (
    ExampleWindow, OnlineTrainer, Publisher, Rejected, Trained, _label_array, data_range, decode_example, gate,
    holdout_split, promotion, prunable, rollback_target, train_batch,
)
from services.trainer.metrics import TrainerMetrics
from services.trainer.service import Trainer, in_thread
from shared.modeling import Vectorizer, build_model, holdout_metrics, predict, reference_statistics
from shared.registry import ArtifactStore, Registry, load_model
from shared.serialization import dumps
from shared.spec import ModelCandidate, parse_spec
from tests.data import FRAUD_TEXT, fraud_training_examples

SPEC = parse_spec(re.sub(r"min_examples: \d+", "min_examples: 100", FRAUD_TEXT))
VEC = Vectorizer(SPEC)


def example(i: int, t: float, label: bool = False) -> bytes:
    return dumps({"event_id": f"e{i}", "type": "training_example", "schema_version": 1,
                  "occurred_at": datetime.fromtimestamp(t, timezone.utc).isoformat(), "entity": "u",
                  "feature_hash": "x", "features": {"txn_count_10m": i}, "data": {"amount": float(i)},
                  "label": label, "labelled_at": "2026-01-01T00:00:00Z"})


def test_decode_refuses_what_the_trainer_cannot_use():
    ex = decode_example(SPEC, example(1, 1000.0, True))
    assert ex.label == 1 and ex.t == 1000.0 and ex.features == {"txn_count_10m": 1}
    from shared.serialization import loads
    maybe = dumps({**loads(example(1, 0.0)), "label": "maybe"})  # not a binary label
    # occurred_at: an offset is honoured, none means UTC
    for when, t in [("2026-01-01T02:00:00+02:00", 1767225600.0), ("2026-01-01T00:00:00", 1767225600.0),
                    ("2026-01-01T00:00:00Z", 1767225600.0)]:
        assert decode_example(SPEC, dumps({**loads(example(1, 0.0)), "occurred_at": when})).t == t
    good = loads(example(1, 0.0))
    no_label = dumps({k: v for k, v in good.items() if k != "label"})
    for bad, code, says in [(b"{", "invalid_json", "not valid JSON"), (b"[]", "invalid", "object"),
                            (dumps({"event_id": "x"}), "invalid", "occurred_at"), (maybe, "invalid", "maybe"),
                            (None, "invalid", "tombstone"), (no_label, "invalid", "'label' is missing"),
                            (dumps({**good, "label": None}), "invalid", ""),
                            (dumps({**good, "event_id": 5}), "invalid", "event_id"),
                            (dumps({**good, "features": [1]}), "invalid", "features"),
                            (dumps({**good, "occurred_at": 1767225600}), "invalid", "occurred_at"),
                            (dumps({**good, "occurred_at": "yesterday"}), "invalid", "yesterday")]:
        with pytest.raises(Rejected) as exc:
            decode_example(SPEC, bad)
        assert exc.value.code == code and says in str(exc.value)


def test_the_window_keeps_the_newest_examples_once_each_in_time_order():
    spec = parse_spec(FRAUD_TEXT.replace("training:\n", "training:\n  max_examples: 100\n"))
    window = ExampleWindow(spec, Vectorizer(spec))
    for i in range(250):
        window.add(decode_example(spec, example(i, 10_000.0 - i)))  # newest event time first
    window.add(decode_example(spec, example(249, 0.0)))  # a repeat of a kept id changes nothing
    X, y, t = window.snapshot()
    assert len(window) == 100 and list(t) == sorted(t) and t[0] == 10_000.0 - 249
    amount = Vectorizer(spec).columns.index("amount")
    assert sorted(X[:, amount]) == [float(i) for i in range(150, 250)]
    # a snapshot is a copy: examples coming in while a retrain fits it leave it alone
    kept = X.copy(), y.copy(), t.copy()
    for i in range(250, 300):
        window.add(decode_example(spec, example(i, 20_000.0 + i)))
    assert np.array_equal(X, kept[0], equal_nan=True) and (y == kept[1]).all() and (t == kept[2]).all()
    X2, _, t2 = window.snapshot()  # the next one reuses the buffers
    assert X2.base is X.base and t2[-1] == 20_299.0 and sorted(X2[:, amount])[-1] == 299.0


def test_holdout_split_is_the_latest_share():
    assert holdout_split(100, 0.2) == 80 and holdout_split(10, 0.25) == 7 and holdout_split(2, 0.9) == 1


def trained(name: str, value: float | None, error: str = "") -> Trained:
    return Trained(ModelCandidate(name=name, library="sklearn", algorithm="logistic_regression"), b"x",
                   {} if value is None else {"roc_auc": value}, {}, 10, 0.0, 1.0, error)


def test_the_gate_promotes_the_best_candidate_only_if_it_meets_the_minimum_and_beats_the_champion():
    champion = type("V", (), {"name": "old", "version": 3})()
    outcome = {t.candidate.name: (stage, reason) for t, stage, reason in gate(
        SPEC, [trained("good", 0.9), trained("worse", 0.85), trained("low", 0.6), trained("broken", None, "boom")],
        {"roc_auc": 0.8}, champion)}
    assert outcome["good"][0] == "champion" and "beats the champion old v3" in outcome["good"][1]
    assert outcome["worse"] == ("rejected", "roc_auc 0.8500 is behind the best candidate good (0.9000) on the same holdout")
    assert outcome["low"][0] == "rejected" and "does not meet the spec's minimum (at least 0.75)" in outcome["low"][1]
    assert outcome["broken"] == ("rejected", "training failed: boom")
    # the margin (0.005): 0.803 does not beat 0.8
    [(_, stage, reason)] = gate(SPEC, [trained("close", 0.803)], {"roc_auc": 0.8}, champion)
    assert stage == "rejected" and "does not beat the champion" in reason
    [(_, stage, reason)] = gate(SPEC, [trained("first", 0.76)], None, None)
    assert stage == "champion" and "no champion yet" in reason


def test_the_gate_reads_a_loss_minimum_as_an_upper_bound():
    spec = parse_spec(FRAUD_TEXT.replace("primary: roc_auc\n  minimum: 0.75", "primary: log_loss\n  minimum: 0.3"))
    t = Trained(ModelCandidate(name="m", library="sklearn", algorithm="logistic_regression"), b"x",
                {"log_loss": 0.35}, {}, 10, 0.0, 1.0)
    [(_, stage, reason)] = gate(spec, [t], None, None)
    assert stage == "rejected" and "(at most 0.3)" in reason


def test_online_learning_skips_what_a_checkpoint_covers_and_train_batch_evaluates_on_the_latest_slice(tmp_path):
    examples = fraud_training_examples(600, seed=2)
    online = OnlineTrainer(SPEC, VEC)
    for offset, e in enumerate(examples[:400]):
        online.learn(0, offset, decode_example(SPEC, dumps(e)))
    assert online.offsets == {0: [0, 400]} and online.learned(0, 399) and not online.learned(0, 400)
    assert online.models["online_logreg"].examples == 400 and online.pending == 400
    window = ExampleWindow(SPEC, VEC)
    for e in examples:
        window.add(decode_example(SPEC, dumps(e)))
    X, y, t = window.snapshot()
    result = train_batch(SPEC, VEC, X, y, t, None)
    names = {r.candidate.name for r in result.trained}
    assert names == {"gbm", "logreg"} and all(not r.error and "roc_auc" in r.metrics for r in result.trained)
    assert result.holdout == (120, float(t[480]), float(t[-1]))  # the latest 20 % by event time
    assert result.champion_metrics is None
    # the champion, loaded by the callable it is given, is evaluated on the same holdout; each candidate's
    # reference statistics are those of the whole training part with its own holdout scores
    y_fit, y_hold = _label_array(y[:480], "binary"), _label_array(y[480:], "binary")
    champion = build_model(SPEC.models[2], SPEC).fit(X[:480], y_fit)
    result = train_batch(SPEC, VEC, X, y, t, lambda: ("sklearn", champion))
    assert result.champion_metrics == holdout_metrics(SPEC, y_hold, predict(champion, "sklearn", "binary", X[480:]))
    logreg = next(r for r in result.trained if r.candidate.name == "logreg")
    assert logreg.metrics == result.champion_metrics  # the same estimator, the same data: the same model
    assert logreg.reference == reference_statistics(VEC, X[:480], y_fit, predict(champion, "sklearn", "binary", X[480:]))

    def tampered():
        raise ValueError("the champion's artifact does not verify")
    with pytest.raises(ValueError, match="does not verify"):
        train_batch(SPEC, VEC, X, y, t, tampered)  # a champion that cannot be loaded fails the retrain

    # monitoring.data_drift.reference_size below the training part: the reference describes its latest rows
    small = parse_spec(re.sub(r"reference_size: \d+", "reference_size: 200", re.sub(
        r"min_examples: \d+", "min_examples: 100", FRAUD_TEXT)))
    result = train_batch(small, VEC, X, y, t, None)
    logreg = next(r for r in result.trained if r.candidate.name == "logreg")
    model = build_model(small.models[2], small).fit(X[:480], y_fit)
    assert logreg.reference == reference_statistics(VEC, X[280:480], y_fit[280:],
                                                    predict(model, "sklearn", "binary", X[480:]))
    assert logreg.reference["rows"] == 200


ONLINE_ONLY = re.sub(r"models:\n(  - .*\n)+", "models:\n  - {name: online_logreg, library: river, algorithm: "
                     "logistic_regression}\n", FRAUD_TEXT)


async def test_a_checkpoint_is_forced_once_held_records_reach_half_the_in_flight_bound(tmp_path):
    """publish_every_examples far above max_in_flight_records: the runtime delivers nothing past the
    in-flight bound and a batch's offsets wait for the checkpoint covering it, so the trainer must
    checkpoint by itself before the bound, or the stream stops (until publish_every_s)."""
    spec = parse_spec(ONLINE_ONLY)
    settings = TrainerSettings(data_dir=tmp_path / "d", artifact_url=str(tmp_path / "a"), max_in_flight_records=400,
                               publish_every_examples=100_000, publish_every_s=3600)
    trainer = Trainer(spec, settings, Registry(), TrainerMetrics())
    assert trainer.hold_limit == 200 and not trainer.batch and trainer.window.capacity == 0
    examples = [decode_example(spec, dumps(e)) for e in fraud_training_examples(450, seed=4)]
    checkpoints = []
    for start in range(0, 450, 150):  # three batches of 150 records
        for offset in range(start, start + 150):
            assert trainer.take(0, offset, examples[offset])
        hold = trainer.segment(150)
        records, done = trainer.checkpoint_records()
        if records:
            assert done is hold  # the checkpoint releases the batches it covers
            checkpoints.append(registry_examples(trainer))
    assert checkpoints == [300]  # 150 held: no checkpoint; 300 >= 200: one; then 150 again: none
    assert len(trainer.window) == 0  # no batch candidate: no window is kept
    assert not trainer.take(0, 10, examples[10])  # covered by the checkpoint: skipped


def registry_examples(trainer: Trainer) -> int:
    return trainer.registry.latest("online_logreg").lineage.data.examples


def test_records_artifacts_promotion_rollback_and_pruning(tmp_path):
    store = ArtifactStore(str(tmp_path))
    publisher = Publisher(SPEC, store, b"k")
    registry = Registry()
    candidate = ModelCandidate(name="logreg", library="sklearn", algorithm="logistic_regression")
    from sklearn.linear_model import LogisticRegression
    from shared.registry import dump_model
    model = LogisticRegression().fit(np.array([[0.0], [1.0]]), np.array([0, 1]))
    versions = []
    for _ in range(5):
        v = publisher.version(registry, candidate, dump_model(model, "sklearn"), stage="candidate",
                              metrics={"roc_auc": 0.8}, evaluation="holdout",
                              data=data_range(None, None, 0.0, 1.0, 2), reference={}, classes=None, inputs=["x"])
        registry.apply(v)
        versions.append(v)
    assert [v.version for v in versions] == [1, 2, 3, 4, 5] and versions[0].signature
    loaded = load_model(store.get(versions[4].artifact_uri), "sklearn", sha256=versions[4].sha256,
                        signature=versions[4].signature, key=b"k")
    assert loaded.predict(np.array([[1.0]]))[0] == 1
    for r in promotion(registry, versions[1], "first"):
        registry.apply(r)
    for r in promotion(registry, versions[3], "better"):
        registry.apply(r)
    assert registry.champion().version == 4 and registry.get("logreg", 2).stage == "archived"
    assert rollback_target(registry).version == 2
    assert [v.version for v in prunable(registry, keep=2)] == [1, 2]  # never the champion (4)


async def test_in_thread_hands_back_the_result_or_the_exception():
    assert await in_thread(sum, [1, 2]) == 3
    with pytest.raises(ZeroDivisionError):
        await in_thread(divmod, 1, 0)
