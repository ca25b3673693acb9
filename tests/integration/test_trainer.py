"""services/trainer against the real broker, run as a real process: the registry on the `models`
topic, online learning with checkpoints, batch retrains with the metric gate, drift alerts, crashes
between artifact and record, tampered artifacts, another spec, and the admin API."""
from __future__ import annotations

import re
import signal
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
from river import linear_model, metrics as river_metrics, preprocessing

from shared.events import Alert, ModelVersion
from shared.modeling import Vectorizer
from shared.registry import Registry, load_model, read_registry
from shared.auth import hash_key
from shared.serialization import dumps
from shared.spec import parse_spec
from tests.data import FRAUD_TEXT, fraud_training_examples, training_examples
from tests.support import ServiceProcess, free_port, metric_value, produce, wait_until

pytestmark = pytest.mark.integration

MODELS = """models:
  - {name: online_logreg, library: river, algorithm: logistic_regression}
  - {name: gbm, library: sklearn, algorithm: hist_gradient_boosting, params: {max_iter: 60}}
  - {name: weak, library: sklearn, algorithm: random_forest, params: {n_estimators: 2, max_depth: 1}}
"""
TRAINING = """training:
  holdout_fraction: 0.25
  min_examples: 1500
  max_examples: 20000
  triggers: {on_drift: true}
"""


def trainer_spec(models: str = MODELS, minimum: str = "0.75") -> str:
    text = re.sub(r"models:\n(  - .*\n)+", models, FRAUD_TEXT)
    text = re.sub(r"training:\n(  .*\n)+", TRAINING, text)
    return text.replace("minimum: 0.75", f"minimum: {minimum}")


ADMIN_KEY = "s3cret-admin-key"


@pytest.fixture
def trainer(service_env, tmp_path):
    """Factory of trainer processes; all stopped at teardown."""
    started: list[ServiceProcess] = []

    def make(spec_yaml: str, name: str = "t1", **extra: str) -> ServiceProcess:
        spec_path = tmp_path / f"{name}.yaml"
        spec_path.write_text(spec_yaml)
        port = free_port()
        env = {**service_env, "LOOPLINE_SPEC_PATH": str(spec_path), "TRAINER_PORT": str(port),
               "TRAINER_DATA_DIR": str(tmp_path / name), "TRAINER_ARTIFACT_URL": str(tmp_path / "artifacts"),
               "TRAINER_SIGNING_KEY": "sign-me", "TRAINER_PUBLISH_EVERY_EXAMPLES": "500",
               "TRAINER_API_KEYS": f'["{hash_key(ADMIN_KEY)}:admin"]', **extra}
        proc = ServiceProcess("services.trainer", env, port=port, log_dir=tmp_path, ready_timeout=180)
        started.append(proc)
        return proc

    yield make
    for proc in started:
        proc.stop()


async def registry_of(kafka, topics) -> Registry:
    return (await read_registry(kafka, topics["models"]))[0]


async def until_registry(kafka, topics, predicate, timeout: float = 240, what: str = "") -> Registry:
    import asyncio
    import time
    deadline = time.monotonic() + timeout
    while True:
        registry = await registry_of(kafka, topics)
        if predicate(registry):
            return registry
        if time.monotonic() > deadline:
            raise TimeoutError(f"registry never had {what}: {[(v.name, v.version, v.stage) for v in registry.versions()]}")
        await asyncio.sleep(1.0)


def keyed_examples(examples, key: bytes | None = None):
    """(key, value) per example: by entity, or all under one key (one partition: one order)."""
    return [(key or (e["entity"] or "__global__").encode(), dumps(e)) for e in examples]


async def test_a_champion_meets_the_spec_and_a_worse_candidate_is_rejected_with_its_reason(kafka, topics, trainer):
    spec = parse_spec(trainer_spec())
    examples = fraud_training_examples(4000, seed=3)
    await produce(kafka, topics["training-examples"], keyed_examples(examples))
    t = trainer(trainer_spec()).start()
    registry = await until_registry(kafka, topics, lambda r: r.champion() is not None and r.latest("weak"),
                                    what="a champion and the weak candidate")
    gbm, weak = registry.latest("gbm"), registry.latest("weak")
    assert gbm.evaluation == "holdout" and weak.evaluation == "holdout"
    champion = registry.champion()
    assert champion.metrics["roc_auc"] >= spec.metrics.minimum
    assert weak.stage == "rejected" and weak.reason and "roc_auc" in weak.reason
    assert weak.metrics["roc_auc"] < champion.metrics["roc_auc"]
    # lineage and integrity of what was published
    assert gbm.lineage.feature_hash == spec.feature_hash() and gbm.lineage.data.examples > 0
    assert gbm.lineage.packages["scikit-learn"] and gbm.lineage.code_version
    data = Path(gbm.artifact_uri.removeprefix("file://")).read_bytes()
    model = load_model(data, "sklearn", sha256=gbm.sha256, signature=gbm.signature, key=b"sign-me")
    assert hasattr(model, "predict_proba") and gbm.reference["features"]["amount"]["kind"] == "numeric"
    listed = httpx.get(f"{t.url}/v1/models").json()
    assert listed["champion"] == {"name": champion.name, "version": champion.version}
    t.stop()


async def test_online_metrics_equal_river_in_process_and_a_restart_learns_each_example_once(kafka, topics, trainer):
    """3,000 examples on one partition (one order); the trainer is killed (-9) after its second
    checkpoint and restarted: the final version has learned every example exactly once, and its
    prequential metrics equal, to the last digit, the same river model fed in-process."""
    spec_text = trainer_spec(models="models:\n  - {name: online_logreg, library: river, algorithm: logistic_regression}\n")
    spec = parse_spec(spec_text)
    examples = fraud_training_examples(3000, seed=5)
    await produce(kafka, topics["training-examples"], keyed_examples(examples[:1600], key=b"one"))
    t = trainer(spec_text).start()
    await until_registry(kafka, topics, lambda r: (r.latest("online_logreg") or _v0()).version >= 2,
                         what="two online versions")
    t.kill()
    covered = (await registry_of(kafka, topics)).latest("online_logreg").lineage.data.examples
    assert 1000 <= covered <= 1600  # the last checkpoint before the kill (every 500, or after 60 s idle)
    await produce(kafka, topics["training-examples"], keyed_examples(examples[1600:], key=b"one"))
    t.start()
    registry = await until_registry(
        kafka, topics, lambda r: any(v.lineage.data.examples == 3000 for v in r.versions("online_logreg")),
        what="a version that learned all 3,000 examples")
    final = next(v for v in registry.versions("online_logreg") if v.lineage.data.examples == 3000)
    assert final.evaluation == "prequential"

    vectorizer = Vectorizer(spec)
    model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    auc, loss = river_metrics.ROCAUC(), river_metrics.LogLoss()
    for e in examples:
        x, y = vectorizer.river_x(e["features"], e["data"]), int(e["label"])
        proba = model.predict_proba_one(x)  # before learning the example (prequential)
        p = proba.get(1, 0.0) if proba else 0.5
        auc.update(bool(y), p)
        loss.update(bool(y), p)
        model.learn_one(x, y)
    assert final.metrics["roc_auc"] == auc.get() and final.metrics["log_loss"] == loss.get()
    metrics = httpx.get(f"{t.url}/metrics").text
    # after the restart: every example the restored checkpoint did not cover, once
    assert metric_value(metrics, "loopline_trainer_examples_total", outcome="learned") == 3000 - covered
    t.stop()


def _v0():
    class V:
        version = 0
    return V()


async def test_a_drift_alert_triggers_a_retrain(kafka, topics, trainer):
    await produce(kafka, topics["training-examples"], keyed_examples(fraud_training_examples(2500, seed=8)))
    t = trainer(trainer_spec()).start()
    before = await until_registry(kafka, topics, lambda r: r.champion() is not None and r.latest("weak"),
                                  what="a champion and the first batch fit")
    gbm_versions = len(before.versions("gbm"))
    now = datetime.now(timezone.utc)
    alert = Alert(fingerprint="data_drift:amount", kind="data_drift", status="firing", severity="warning",
                  subject="amount", value=0.4, threshold=0.2, started_at=now, updated_at=now)
    await produce(kafka, topics["alerts"], [(b"data_drift:amount", alert.model_dump_json().encode())])
    after = await until_registry(kafka, topics, lambda r: len(r.versions("gbm")) > gbm_versions,
                                 what="a gbm version after the alert")
    assert len(after.versions("weak")) > len(before.versions("weak"))  # every batch candidate was retrained
    assert metric_value(httpx.get(f"{t.url}/metrics").text, "loopline_trainer_retrains_total",
                        trigger="drift", outcome="published") == 1
    t.stop()


async def test_a_crash_between_artifact_and_record_leaves_a_consistent_registry(kafka, topics, trainer, tmp_path):
    await produce(kafka, topics["training-examples"], keyed_examples(fraud_training_examples(2000, seed=9)))
    crashing = trainer(trainer_spec(), TRAINER_CRASH_AFTER_ARTIFACT="true")
    crashing.start(wait_ready=False)
    assert crashing.proc.wait(timeout=180) == 17  # died right after writing its first artifact
    artifacts = sorted((tmp_path / "artifacts").rglob("*.*"))
    assert artifacts, "no artifact was written before the crash"
    assert (await registry_of(kafka, topics)).versions() == []  # ... and no record points at it
    t = trainer(trainer_spec(), name="t2").start()
    registry = await until_registry(kafka, topics, lambda r: r.champion() is not None, what="a champion")
    for v in registry.versions():  # every record's artifact is complete and verifies
        data = Path(v.artifact_uri.removeprefix("file://")).read_bytes()
        load_model(data, v.library, sha256=v.sha256, signature=v.signature, key=b"sign-me")
    t.stop()


async def test_a_tampered_artifact_is_refused(kafka, topics, trainer):
    await produce(kafka, topics["training-examples"], keyed_examples(fraud_training_examples(2500, seed=10)))
    t = trainer(trainer_spec()).start()
    registry = await until_registry(kafka, topics, lambda r: r.champion() is not None and r.latest("weak"),
                                    what="a champion and the first batch fit")
    champion = registry.champion()
    path = Path(champion.artifact_uri.removeprefix("file://"))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    r = httpx.post(f"{t.url}/v1/retrain", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert r.status_code == 202
    wait_until(lambda: "ArtifactRejected" in httpx.get(f"{t.url}/readyz").text, 120,
               "the retrain to refuse the tampered champion")
    assert metric_value(httpx.get(f"{t.url}/metrics").text, "loopline_trainer_retrains_total",
                        trigger="request", outcome="failed") == 1
    t.stop()


async def test_admin_routes_need_the_key_and_promote_and_rollback_work(kafka, topics, trainer):
    await produce(kafka, topics["training-examples"], keyed_examples(fraud_training_examples(2500, seed=12)))
    t = trainer(trainer_spec()).start()
    registry = await until_registry(kafka, topics, lambda r: r.champion() is not None and r.latest("weak"),
                                    what="a champion and the weak candidate")
    champion, weak = registry.champion(), registry.latest("weak")
    url = f"{t.url}/v1/models/{weak.name}/{weak.version}/promote"
    assert httpx.post(url).status_code == 401
    assert httpx.post(url, headers={"Authorization": "Bearer wrong"}).status_code == 403
    r = httpx.post(url, headers={"X-API-Key": ADMIN_KEY})
    assert r.status_code == 200 and r.json()["stage"] == "champion"
    promoted = await until_registry(kafka, topics, lambda r: r.champion().name == "weak", what="weak as champion")
    assert promoted.get(champion.name, champion.version).stage == "archived"
    assert httpx.post(f"{t.url}/v1/rollback").status_code == 401
    r = httpx.post(f"{t.url}/v1/rollback", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert r.status_code == 200 and r.json()["champion"]["name"] == champion.name
    back = await until_registry(kafka, topics, lambda r: r.champion().name == champion.name, what="the rollback")
    assert back.champion().version == champion.version
    assert httpx.get(f"{t.url}/v1/models/nope/1").status_code == 404
    auth = {"Authorization": f"Bearer {ADMIN_KEY}"}
    r = httpx.post(f"{t.url}/v1/models/{weak.name}/{weak.version}/stage", json={"stage": "shadow"}, headers=auth)
    assert r.status_code == 200 and r.json()["stage"] == "shadow"
    r = httpx.post(f"{t.url}/v1/models/{champion.name}/{champion.version}/stage", json={"stage": "shadow"},
                   headers=auth)
    assert r.status_code == 409 and "champion" in r.json()["detail"]
    await until_registry(kafka, topics, lambda r: r.get(weak.name, weak.version).stage == "shadow", what="a shadow")
    t.stop()


async def test_a_regression_label_on_a_global_stream(kafka, topics, trainer):
    """No entity, a regression label (minutes until delivery), MAE as the primary metric (an upper
    bound), a river and a scikit-learn candidate."""
    spec_text = """
name: eta
event:
  time_field: ts
  fields:
    distance_km: {type: float, min: 0}
    zone: {type: category, values: [a, b, c]}
    ts: {type: timestamp}
label: {name: minutes, type: regression, max_delay: 1h}
features:
  allowed_lateness: 1m
  definitions:
    - {name: n_10m, agg: count, window: 10m}
    - {name: km_mean_1h, agg: mean, field: distance_km, window: 1h}
models:
  - {name: online_lr, library: river, algorithm: linear_regression}
  - {name: ridge, library: sklearn, algorithm: ridge}
training: {holdout_fraction: 0.2, min_examples: 800, max_examples: 5000}
metrics: {primary: mae, minimum: 6.0, report: [rmse, r2]}
"""
    spec = parse_spec(spec_text)
    import random
    rng = random.Random(4)
    start = datetime(2026, 4, 1, tzinfo=timezone.utc)
    pairs = []
    for i in range(2000):
        km, zone = rng.uniform(0.5, 10), rng.choice("abc")
        minutes = 4 * km + {"a": 0, "b": 5, "c": 10}[zone] + rng.gauss(0, 1.5)
        pairs.append(({"distance_km": km, "zone": zone, "ts": (start + timedelta(seconds=30 * i)).isoformat()},
                      minutes))
    examples = training_examples(spec, pairs)
    await produce(kafka, topics["training-examples"], keyed_examples(examples))
    t = trainer(spec_text).start()
    registry = await until_registry(kafka, topics, lambda r: r.champion() is not None and r.latest("online_lr"),
                                    what="a champion")
    champion = registry.champion()
    assert champion.task == "regression" and champion.metrics["mae"] <= 6.0
    assert set(champion.metrics) >= {"mae", "rmse", "r2"}
    assert registry.latest("online_lr").metrics["mae"] > 0
    t.stop()


ONLINE_ONLY = "models:\n  - {name: online_logreg, library: river, algorithm: logistic_regression}\n"


async def test_a_checkpoint_interval_beyond_the_in_flight_bound_does_not_stop_the_stream(kafka, topics, trainer):
    """TRAINER_PUBLISH_EVERY_EXAMPLES far above TRAINER_MAX_IN_FLIGHT_RECORDS (and no checkpoint by time
    within the test): the runtime delivers nothing past the in-flight bound and a batch's offsets wait
    for the checkpoint covering it, so before the trainer forced a checkpoint at half that bound it
    learned a few hundred examples and stopped. Now it learns all 3,000, each once."""
    await produce(kafka, topics["training-examples"], keyed_examples(fraud_training_examples(3000, seed=14)))
    t = trainer(trainer_spec(models=ONLINE_ONLY), TRAINER_PUBLISH_EVERY_EXAMPLES="1000000",
                TRAINER_PUBLISH_EVERY_S="100000", TRAINER_MAX_IN_FLIGHT_RECORDS="400",
                TRAINER_MAX_POLL_RECORDS="100").start()
    wait_until(lambda: metric_value(httpx.get(f"{t.url}/metrics").text, "loopline_trainer_examples_total",
                                    outcome="learned") == 3000, 180, "all 3,000 examples learned")
    metrics = httpx.get(f"{t.url}/metrics").text
    assert metric_value(metrics, "loopline_trainer_examples_total", outcome="skipped") in (None, 0.0)
    registry = await until_registry(
        kafka, topics, lambda r: r.latest("online_logreg") and r.latest("online_logreg").lineage.data.examples > 2800,
        what="the forced checkpoints")
    covered = [v.lineage.data.examples for v in registry.versions("online_logreg")]
    # a checkpoint once 200 to 299 records wait (batches of at most 100): the last one leaves fewer than 200
    assert covered == sorted(covered) and all(200 <= b - a < 300 for a, b in zip([0, *covered], covered))
    assert 3000 - 200 < covered[-1] <= 3000
    # no scikit-learn candidate: nothing to retrain
    r = httpx.post(f"{t.url}/v1/retrain", headers={"X-API-Key": ADMIN_KEY})
    assert r.status_code == 409 and r.json()["field"] == "models" and r.json()["code"] == "no_batch_candidate"
    t.stop()


async def test_a_retrain_request_below_min_examples_is_refused_with_the_reason(kafka, topics, trainer):
    examples = fraud_training_examples(1600, seed=15)
    await produce(kafka, topics["training-examples"], keyed_examples(examples[:1000]))
    t = trainer(trainer_spec()).start()  # min_examples: 1500
    wait_until(lambda: metric_value(httpx.get(f"{t.url}/metrics").text, "loopline_trainer_examples_total",
                                    outcome="learned") == 1000, 120, "the 1,000 examples")
    auth = {"Authorization": f"Bearer {ADMIN_KEY}"}
    assert httpx.post(f"{t.url}/v1/retrain").status_code == 401  # the key is checked first
    r = httpx.post(f"{t.url}/v1/retrain", headers=auth)
    assert r.status_code == 409
    body = r.json()
    assert body["field"] == "training.min_examples" and body["code"] == "too_few_examples"
    assert body["reason"] == "the training window holds 1000 examples; the spec's training.min_examples is 1500"
    await produce(kafka, topics["training-examples"], keyed_examples(examples[1000:]))
    wait_until(lambda: metric_value(httpx.get(f"{t.url}/metrics").text, "loopline_trainer_examples_total",
                                    outcome="learned") == 1600, 120, "600 more examples")
    r = httpx.post(f"{t.url}/v1/retrain", headers=auth)
    assert r.status_code == 202 and r.json() == {"triggered": True, "window_examples": 1600}
    t.stop()
