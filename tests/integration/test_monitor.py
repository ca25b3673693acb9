"""The monitor as a real process against the real broker: predictions, labels and snapshots go in
as serving, the feature worker and the join write them; alerts come out. The generator injects a
data drift, a label-changing drift and an unfair segment at known points."""
from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import numpy as np
import pytest

from shared.events import Alert, Prediction
from shared.modeling import Predictions, Vectorizer, reference_statistics
from shared.serialization import dumps
from shared.spec import parse_spec
from tests.data import FRAUD_TEXT, fraud_training_examples, model_version
from tests.integration.test_trainer import keyed_examples, trainer, trainer_spec, until_registry  # noqa: F401
from tests.support import ServiceProcess, free_port, metric_value, produce, read_topic, wait_until

pytestmark = pytest.mark.asyncio

WINDOW, PERF = 200, 1500
SPEC_TEXT = (FRAUD_TEXT
             .replace("window_size: 2000}", f"window_size: {WINDOW}}}")
             .replace("performance_window: 2000", f"performance_window: {PERF}")
             .replace("segments: [country, channel]", "segments: [channel]"))  # 500 a channel: little noise
SPEC = parse_spec(SPEC_TEXT)
VEC = Vectorizer(SPEC)
FEATURES = [d.name for d in SPEC.features.definitions]
COUNTRIES = SPEC.event.fields["country"].values
T0 = datetime(2026, 11, 1, tzinfo=UTC)


class Traffic:
    """Synthetic transactions: their features, the champion's score and the true label."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.i = 0

    def one(self, *, amount_scale: float = 1.0, flip_labels: bool = False, unfair: str | None = None):
        rng, self.i = self.rng, self.i + 1
        data = {"user_id": f"u{self.i % 50}", "amount": float(rng.lognormal(3, 1) * amount_scale),
                "merchant_category": str(rng.choice(SPEC.event.fields["merchant_category"].values)),
                "country": str(rng.choice(COUNTRIES)), "channel": str(rng.choice(["pos", "web", "app"]))}
        features = {name: float(rng.normal(5, 2)) for name in FEATURES}
        x = features["txn_count_10m"] - 5
        score = 1 / (1 + math.exp(-2 * x))
        if unfair is not None and data["channel"] == unfair:
            score *= 0.1  # this segment is rarely flagged
        label = int(rng.random() < score)
        if flip_labels:
            label = 1 - label
        return data, features, score, label

    def vector(self, data, features):
        row = VEC.matrix([(features, data)])[0]
        return {c: (None if v != v else float(v)) for c, v in zip(VEC.columns, row)}


def reference(seed: int = 7, n: int = 4000) -> dict:
    t = Traffic(seed)
    rows = [t.one() for _ in range(n)]
    X = VEC.matrix([(f, d) for d, f, _, _ in rows])
    scores = np.array([s for _, _, s, _ in rows])
    return reference_statistics(VEC, X, [lbl for *_, lbl in rows],
                                Predictions(scores, (scores >= 0.5).astype(int)))


def records_for(t: Traffic, n: int, start: int, **kw):
    """n predictions (and their labelled training examples) from event number `start` on."""
    predictions, examples = [], []
    for k in range(n):
        data, features, score, label = t.one(**kw)
        event_id = f"ev-{start + k}"
        at = T0 + timedelta(seconds=start + k)
        data["ts"] = at.isoformat()
        p = Prediction(prediction_id=str(uuid.uuid4()), event_id=event_id, occurred_at=at, predicted_at=at,
                       entity=data["user_id"], model_name="gbm", model_version=1, variant="champion",
                       score=score, predicted=score >= 0.5, features=t.vector(data, features),
                       feature_hash=SPEC.feature_hash(), latency_ms=1.0)
        predictions.append((data["user_id"].encode(), p.model_dump_json().encode()))
        examples.append((data["user_id"].encode(), dumps({
            "type": "training_example", "schema_version": 1, "event_id": event_id, "occurred_at": at,
            "ingested_at": at, "source": "test", "entity": data["user_id"], "feature_hash": SPEC.feature_hash(),
            "features": features, "data": data, "label": bool(label), "labelled_at": at + timedelta(hours=1)})))
    return predictions, examples


@pytest.fixture
def monitor(service_env, tmp_path):
    started: list[ServiceProcess] = []

    def make(name: str = "m1", spec_text: str = SPEC_TEXT, **extra: str) -> ServiceProcess:
        spec_path = tmp_path / f"{name}.yaml"
        spec_path.write_text(spec_text)
        port = free_port()
        proc = ServiceProcess("services.monitor", {
            **service_env, "LOOPLINE_SPEC_PATH": str(spec_path), "MONITOR_PORT": str(port),
            "MONITOR_DATA_DIR": str(tmp_path / name), **extra}, port=port, log_dir=tmp_path, ready_timeout=180)
        started.append(proc)
        return proc

    yield make
    for proc in started:
        proc.stop()


async def champion_with_reference(kafka, topics, tmp_path):
    from sklearn.dummy import DummyClassifier

    model = DummyClassifier().fit([[0.0]], [0])
    version = model_version(SPEC, str(tmp_path / "artifacts"), model, name="gbm", version=1, stage="champion")
    version = version.model_copy(update={"reference": reference()})
    await produce(kafka, topics["models"], [(version.key.encode(), version.model_dump_json().encode())])


def consumed(proc: ServiceProcess, topic: str, n: int) -> bool:
    text = httpx.get(f"{proc.url}/metrics", timeout=5).text
    return (metric_value(text, "loopline_monitor_records_total", topic=topic, outcome="ok") or 0) >= n


def wait_consumed(proc: ServiceProcess, topic: str, n: int, what: str) -> None:
    try:
        wait_until(lambda: consumed(proc, topic, n), 90, what)
    except TimeoutError:
        records = [line for line in httpx.get(f"{proc.url}/metrics").text.splitlines()
                   if line.startswith("loopline_monitor_records_total")]
        raise AssertionError(f"{what}: {records}\n{proc.tail(20)}") from None


async def alerts_of(kafka, topics) -> list[Alert]:
    return [Alert.model_validate_json(r.value) for r in await read_topic(kafka, topics["alerts"], idle_s=1.5)]


async def test_data_drift_fires_for_the_drifted_feature_after_the_drift_and_resolves_after_it(
        kafka, topics, monitor, tmp_path):
    await champion_with_reference(kafka, topics, tmp_path)
    m = monitor().start()
    t = Traffic(11)
    normal, _ = records_for(t, 5 * WINDOW, 0)
    await produce(kafka, topics["predictions"], normal)
    wait_until(lambda: consumed(m, "predictions", len(normal)), 60, "the normal predictions")
    assert [a for a in await alerts_of(kafka, topics) if a.kind in ("data_drift", "prediction_drift")] == []

    drifted, _ = records_for(t, 3 * WINDOW, 5 * WINDOW, amount_scale=4.0)
    await produce(kafka, topics["predictions"], drifted)
    wait_until(lambda: consumed(m, "predictions", len(normal) + len(drifted)), 60, "the drifted predictions")
    alerts = await alerts_of(kafka, topics)
    data = [a for a in alerts if a.kind == "data_drift"]
    assert [(a.subject, a.status) for a in data] == [("amount", "firing")], data  # only the drifted input
    fired = data[0]
    assert fired.statistic == "psi" and fired.value > 0.2 and fired.threshold == 0.2 and fired.window == WINDOW
    assert fired.model_name == "gbm" and fired.model_version == 1
    body = httpx.get(f"{m.url}/v1/alerts").json()
    assert [a["subject"] for a in body["firing"] if a["kind"] == "data_drift"] == ["amount"]
    drift_metric = metric_value(httpx.get(f"{m.url}/metrics").text, "loopline_monitor_data_drift",
                                feature="amount", statistic="psi")
    assert drift_metric is not None and drift_metric > 0.2

    back, _ = records_for(t, 2 * WINDOW, 8 * WINDOW)
    await produce(kafka, topics["predictions"], back)
    wait_until(lambda: consumed(m, "predictions", len(normal) + len(drifted) + len(back)), 60, "the return")
    data = [a for a in await alerts_of(kafka, topics) if a.kind == "data_drift"]
    assert [(a.subject, a.status) for a in data] == [("amount", "firing"), ("amount", "resolved")]
    assert data[1].fingerprint == fired.fingerprint and data[1].value <= 0.2 * SPEC.monitoring.hysteresis


async def test_labels_that_change_meaning_fire_concept_drift_and_the_live_metric_alert_and_bias_is_found(
        kafka, topics, monitor, tmp_path):
    await champion_with_reference(kafka, topics, tmp_path)
    m = monitor().start()
    t = Traffic(12)
    # labels first for half of them: the join waits for either side
    preds, examples = records_for(t, 1500, 0, unfair="web")
    await produce(kafka, topics["training-examples"], examples[:750])
    await produce(kafka, topics["predictions"], preds)
    await produce(kafka, topics["training-examples"], examples[750:])
    wait_consumed(m, "training-examples", 1500, "the first labels")
    text = httpx.get(f"{m.url}/metrics").text
    assert metric_value(text, "loopline_monitor_labelled_predictions_total", variant="champion") == 1500
    before = await alerts_of(kafka, topics)
    assert [a for a in before if a.kind in ("concept_drift", "performance")] == []
    bias = [a for a in before if a.kind == "bias" and a.status == "firing"]
    assert {a.subject for a in bias if a.statistic == "positive_rate_ratio"} == {"channel=web"}
    live = httpx.get(f"{m.url}/v1/performance").json()["versions"]
    assert live[0]["variant"] == "champion" and live[0]["metrics"]["roc_auc"] > 0.75

    preds, examples = records_for(t, 1000, 1500, flip_labels=True, unfair="web")
    await produce(kafka, topics["predictions"], preds)
    await produce(kafka, topics["training-examples"], examples)
    wait_consumed(m, "training-examples", 2500, "the flipped labels")
    after = await alerts_of(kafka, topics)
    concept = [a for a in after if a.kind == "concept_drift"]
    assert [a.status for a in concept] == ["firing"] and concept[0].statistic == "adwin"
    perf = [a for a in after if a.kind == "performance"]
    assert perf and perf[0].status == "firing" and perf[0].statistic == "roc_auc" and perf[0].value < 0.75
    assert metric_value(httpx.get(f"{m.url}/metrics").text, "loopline_monitor_concept_drift_detections_total") >= 1


async def test_skew_between_served_features_and_the_snapshot_is_counted_and_alerted(kafka, topics, monitor,
                                                                                   tmp_path):
    await champion_with_reference(kafka, topics, tmp_path)
    m = monitor().start()
    t = Traffic(13)
    preds, _ = records_for(t, WINDOW, 0)
    snapshots = []
    for k, (key, value) in enumerate(preds):
        p = Prediction.model_validate_json(value)
        features = {name: p.features[name] for name in FEATURES}
        if k % 10 == 0:
            features["amount_mean_24h"] += 1.0  # what the feature service computed differs
        snapshots.append((key, dumps({"type": "snapshot", "event_id": p.event_id, "features": features,
                                      "data": {}, "entity": p.entity})))
    await produce(kafka, topics["features"], snapshots[:50])  # some snapshots before their predictions
    await produce(kafka, topics["predictions"], preds)
    await produce(kafka, topics["features"], snapshots[50:])
    wait_consumed(m, "features", WINDOW, "the snapshots")
    text = httpx.get(f"{m.url}/metrics").text
    assert metric_value(text, "loopline_monitor_skew_compared_total") == WINDOW
    assert metric_value(text, "loopline_monitor_skew_mismatches_total", feature="amount_mean_24h") == WINDOW / 10
    assert metric_value(text, "loopline_monitor_skew_mismatches_total", feature="amount_std_24h") is None
    skew = [a for a in await alerts_of(kafka, topics) if a.kind == "skew"]
    assert len(skew) == 1 and skew[0].status == "firing" and skew[0].value == pytest.approx(0.1)


async def test_bad_records_are_dead_lettered_and_a_restart_keeps_the_alert_state(kafka, topics, monitor, tmp_path):
    await champion_with_reference(kafka, topics, tmp_path)
    m = monitor().start()
    t = Traffic(14)
    await produce(kafka, topics["predictions"], [(b"k", b"{not json"), (b"k", dumps({"event_id": "x"}))])
    drifted, _ = records_for(t, WINDOW, 0, amount_scale=4.0)
    await produce(kafka, topics["predictions"], drifted)
    wait_consumed(m, "predictions", WINDOW, "the drifted window")
    dlq = await read_topic(kafka, topics["events.dlq"], expect=2)
    codes = sorted(dict(r.headers)["dlq.error.code"].decode() for r in dlq)
    assert codes == ["invalid_json", "missing"]
    firing = [a for a in await alerts_of(kafka, topics) if a.status == "firing"]
    assert "amount" in {a.subject for a in firing}

    m.kill()
    m2 = monitor("m2").start()  # a fresh local store: the state comes from Kafka
    body = httpx.get(f"{m2.url}/v1/alerts").json()
    assert {a["fingerprint"] for a in body["firing"]} == {a.fingerprint for a in firing}
    more, _ = records_for(t, WINDOW, WINDOW, amount_scale=4.0)  # still drifted: grouped, not re-sent
    await produce(kafka, topics["predictions"], more)
    wait_consumed(m2, "predictions", WINDOW, "the next window")
    again = [a for a in await alerts_of(kafka, topics) if a.subject == "amount"]
    assert [a.status for a in again] == ["firing"]


async def test_the_loop_closes_a_drift_alert_from_the_monitor_makes_the_trainer_retrain(
        kafka, topics, monitor, trainer, tmp_path):
    """The monitor and the trainer as real processes: the trainer's champion carries the reference
    statistics of its training data; live predictions with drifted amounts make the monitor fire a
    data-drift alert on `alerts`, and the trainer retrains every batch candidate on it."""
    spec_text = trainer_spec().replace("window_size: 2000}", f"window_size: {WINDOW}}}")
    await produce(kafka, topics["training-examples"], keyed_examples(fraud_training_examples(2500, seed=21)))
    t = trainer(spec_text).start()
    before = await until_registry(kafka, topics, lambda r: r.champion() is not None and r.latest("weak"),
                                  what="a champion and the first batch fit")
    champion = before.champion()
    assert champion.reference["features"]["amount"]["kind"] == "numeric"
    m = monitor(spec_text=spec_text).start()
    spec, vec = parse_spec(spec_text), Vectorizer(parse_spec(spec_text))
    live = []
    for k, e in enumerate(fraud_training_examples(3 * WINDOW, seed=22)):
        data = {**e["data"], "amount": e["data"]["amount"] * 5}  # the same users spending five times as much
        row = vec.matrix([(e["features"], data)])[0]
        p = Prediction(prediction_id=str(uuid.uuid4()), event_id=f"live-{k}", occurred_at=T0, predicted_at=T0,
                       entity=e["entity"], model_name=champion.name, model_version=champion.version,
                       variant="champion", score=0.1, predicted=False, feature_hash=spec.feature_hash(),
                       features={c: (None if v != v else float(v)) for c, v in zip(vec.columns, row)},
                       latency_ms=1.0)
        live.append((e["entity"].encode(), p.model_dump_json().encode()))
    await produce(kafka, topics["predictions"], live)
    wait_consumed(m, "predictions", len(live), "the live predictions")
    fired = [a for a in await alerts_of(kafka, topics) if a.kind == "data_drift" and a.status == "firing"]
    assert "amount" in {a.subject for a in fired}
    after = await until_registry(kafka, topics, lambda r: len(r.versions("weak")) > len(before.versions("weak")),
                                 what="a batch retrain after the monitor's alert")
    assert len(after.versions("gbm")) > len(before.versions("gbm"))
    assert metric_value(httpx.get(f"{t.url}/metrics").text, "loopline_trainer_retrains_total",
                        trigger="drift", outcome="published") == 1
