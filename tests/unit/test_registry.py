"""shared.registry and the ModelVersion record: the registry rebuilt from its log, artifacts written
whole, and no artifact deserialized before its digest and signature check out."""
from __future__ import annotations

import json
import pickle
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
import skops.io
from pydantic import ValidationError

from shared import registry as reg
from shared.errors import ArtifactRejected, LooplineError
from shared.events import DataRange, Lineage, ModelVersion
from shared.modeling import Vectorizer, build_model, model_classes, predict, reference_statistics
from shared.registry import (
    ArtifactStore,
    Registry,
    artifact_key,
    code_version,
    digest,
    dump_model,
    load_model,
    package_versions,
    sign,
    verify,
)
from shared.serialization import dumps
from shared.spec import ModelCandidate
from shared.topics import CATALOGUE
from tests.data import FRAUD, envelope, txn, wire

T0 = datetime(2026, 11, 26, 12, tzinfo=timezone.utc)
KEY = b"signing-key-for-tests"


def version(name: str = "gbm", number: int = 1, stage: str = "candidate", at: datetime = T0,
            **extra) -> ModelVersion:
    fields = dict(
        name=name, version=number, stage=stage, library="sklearn", algorithm="hist_gradient_boosting",
        task="binary", artifact_uri=f"file:///a/fraud/{name}/{number}.skops", sha256="0" * 64, signature=None,
        metrics={"roc_auc": 0.9}, evaluation="holdout", trained_at=T0, updated_at=at, params={"max_iter": 10},
        inputs=["amount"], classes=["false", "true"],
        lineage=Lineage(feature_hash=FRAUD.feature_hash(), spec_name="fraud",
                        data=DataRange(topic="training-examples", offsets={"0": [0, 500]}, examples=500),
                        code_version="abc1234", packages={"python": "3.11.7"}),
        reference={},
    )
    return ModelVersion(**(fields | extra))


# ---------------------------------------------------------------- ModelVersion

def test_model_version_round_trips_through_json_with_real_reference_statistics():
    v = Vectorizer(FRAUD)
    rows = [({"txn_count_10m": i % 5}, envelope(txn(i))["data"]) for i in range(200)]
    X = v.matrix(rows)
    y = [i % 3 == 0 for i in range(200)]
    candidate = ModelCandidate(name="logreg", library="sklearn", algorithm="logistic_regression")
    model = build_model(candidate, FRAUD)
    model.fit(X, y)
    holdout = predict(model, "sklearn", "binary", X[:40])
    record = version(
        "logreg", 3, "challenger", inputs=v.columns, classes=model_classes(FRAUD), signature="ab" * 32,
        metrics={"roc_auc": 0.81, "log_loss": 0.5}, reason="beat the champion by 0.01", parent_version=2,
        lineage=Lineage(feature_hash=FRAUD.feature_hash(), spec_name="fraud",
                        data=DataRange(topic="training-examples", offsets={"0": [10, 120], "3": [0, 90]},
                                       start=T0 - timedelta(days=1), end=T0, examples=200),
                        code_version=code_version(), packages=package_versions()),
        reference=reference_statistics(v, X, [int(t) for t in y], holdout))
    text = record.model_dump_json()
    assert ModelVersion.model_validate_json(text) == record
    assert record.key == "logreg:3"
    # what a service puts on the topic: the project's JSON, strict to the model, well under Kafka's 1 MiB
    value = dumps(record.model_dump(mode="json"))
    assert wire(value, ModelVersion)["lineage"]["data"]["offsets"] == {"0": [10, 120], "3": [0, 90]}
    assert len(value) < 64 * 1024
    assert CATALOGUE["models"].model is ModelVersion


def test_model_version_refuses_what_it_must():
    with pytest.raises(ValidationError, match="sha256"):
        version(sha256="xyz")
    with pytest.raises(ValidationError, match="version"):
        version(number=0)
    with pytest.raises(ValidationError, match="stage"):
        version(stage="production")
    with pytest.raises(ValidationError, match="first <= next"):
        DataRange(offsets={"0": [5, 3]}, examples=0)
    with pytest.raises(ValidationError, match="offsets"):
        DataRange(offsets={"0": [5]}, examples=0)
    with pytest.raises(ValidationError, match="metrics"):
        version(metrics={"roc_auc": float("nan")})
    naive = version(at=datetime(2026, 11, 26, 12))  # naive means UTC
    assert naive.updated_at == T0 and naive.updated_at.tzinfo is not None


def test_staged_is_a_validated_copy_at_a_new_time():
    record = version()
    promoted = record.staged("champion", at=T0 + timedelta(hours=1), reason="first model")
    assert (promoted.stage, promoted.updated_at, promoted.reason) == ("champion", T0 + timedelta(hours=1),
                                                                      "first model")
    assert promoted.model_dump(exclude={"stage", "updated_at", "reason"}) == record.model_dump(
        exclude={"stage", "updated_at", "reason"})
    with pytest.raises(ValidationError):
        record.staged("production", at=T0)  # type: ignore[arg-type]


# ---------------------------------------------------------------- Registry

def test_registry_rebuilt_from_the_log_follows_stage_changes():
    r = Registry()
    assert (r.champion(), r.latest("gbm"), r.next_version("gbm"), r.versions()) == (None, None, 1, [])
    log = [
        version("gbm", 1, "candidate", T0),
        version("gbm", 1, "champion", T0 + timedelta(minutes=1)),
        version("logreg", 1, "candidate", T0 + timedelta(minutes=2)),
        version("logreg", 1, "rejected", T0 + timedelta(minutes=3), reason="roc_auc 0.7 < minimum 0.75"),
        version("gbm", 2, "candidate", T0 + timedelta(minutes=4)),
        version("gbm", 2, "challenger", T0 + timedelta(minutes=5)),
    ]
    for record in log:
        r.apply(record)
    assert r.champion().key == "gbm:1"
    assert [v.key for v in r.versions()] == ["gbm:1", "gbm:2", "logreg:1"]
    assert [v.key for v in r.versions("gbm")] == ["gbm:1", "gbm:2"]
    assert r.get("logreg", 1).stage == "rejected" and r.get("logreg", 1).reason.startswith("roc_auc")
    assert r.latest("gbm").version == 2
    assert (r.next_version("gbm"), r.next_version("logreg"), r.next_version("x")) == (3, 2, 1)
    assert [v.key for v in r.in_stage("challenger")] == ["gbm:2"]
    # promotion: the new champion's record comes first, the old one's archive record after it
    r.apply(version("gbm", 2, "champion", T0 + timedelta(minutes=6)))
    assert r.champion().key == "gbm:2"  # two claim it: the later updated_at wins
    r.apply(version("gbm", 1, "archived", T0 + timedelta(minutes=6), reason="replaced by gbm:2"))
    assert r.champion().key == "gbm:2" and [v.key for v in r.in_stage("champion")] == ["gbm:2"]
    # rollback: the archived version is champion again, by a later record
    r.apply(version("gbm", 1, "champion", T0 + timedelta(minutes=7), reason="rollback"))
    assert r.champion().key == "gbm:1"
    view = r.as_dict()
    assert view["champion"] == "gbm:1" and [v["stage"] for v in view["versions"]] == ["champion", "champion",
                                                                                      "rejected"]
    json.dumps(view)
    r.forget("gbm", 1)  # a tombstone
    assert r.champion().key == "gbm:2" and len(r) == 2


# ---------------------------------------------------------------- artifacts

def fitted_models():
    v = Vectorizer(FRAUD)
    rows = [({"txn_count_10m": i % 5, "amount_sum_1h": i * 1.5}, envelope(txn(i))["data"])
            for i in range(120)]
    y = [int(i % 5 > 2) for i in range(120)]
    X = v.matrix(rows)
    gbm = build_model(ModelCandidate(name="gbm", library="sklearn", algorithm="hist_gradient_boosting",
                                     params={"max_iter": 10}), FRAUD)
    gbm.fit(X, y)
    online = build_model(ModelCandidate(name="online", library="river", algorithm="logistic_regression"),
                         FRAUD)
    xs = [v.river_x(f, d) for f, d in rows]
    for x, target in zip(xs, y):
        online.learn_one(x, target)
    return {"sklearn": (gbm, X), "river": (online, xs)}


MODELS = fitted_models()


@pytest.mark.parametrize("library", ["sklearn", "river"])
def test_artifact_round_trip_through_a_local_store(tmp_path, library):
    model, X = MODELS[library]
    store = ArtifactStore(str(tmp_path / "artifacts"))
    data = dump_model(model, library)
    key = artifact_key("fraud", "m", 4, library)
    uri = store.put(key, data)
    folder = tmp_path / "artifacts" / "fraud" / "m"
    assert uri == (folder / f"4.{'skops' if library == 'sklearn' else 'pkl'}").as_uri()
    assert [p.name for p in folder.iterdir()] == [uri.rsplit("/", 1)[1]]  # no temporary file left
    # a second store from the file:// URL reads it back; the loaded model predicts the same
    again = ArtifactStore((tmp_path / "artifacts").as_uri()).get(uri)
    assert again == data
    loaded = load_model(again, library, sha256=digest(data), signature=sign(data, KEY), key=KEY)
    before, after = predict(model, library, "binary", X), predict(loaded, library, "binary", X)
    np.testing.assert_array_equal(before.scores, after.scores)
    assert 0 < before.labels.sum() < len(X)  # a real model, not a constant


def test_an_fsspec_store_round_trip():
    store = ArtifactStore("memory://loopline-test-artifacts/prod")
    uri = store.put("fraud/gbm/1.skops", b"model bytes")
    assert uri == "memory://loopline-test-artifacts/prod/fraud/gbm/1.skops"
    assert store.get(uri) == b"model bytes"
    assert store.put("fraud/gbm/1.skops", b"newer") == uri and store.get(uri) == b"newer"


def test_a_crash_while_writing_leaves_nothing_under_the_key(tmp_path, monkeypatch):
    store = ArtifactStore(str(tmp_path))

    def crash(*args):
        raise OSError("disk gone")

    monkeypatch.setattr(reg.os, "replace", crash)
    with pytest.raises(OSError):
        store.put("fraud/gbm/1.skops", b"x" * 1000)
    assert list((tmp_path / "fraud" / "gbm").iterdir()) == []  # neither the file nor a temporary


def test_a_store_reads_only_its_own_artifacts(tmp_path):
    store = ArtifactStore(str(tmp_path / "a"))
    (tmp_path / "secret").write_bytes(b"s")
    for uri in [(tmp_path / "secret").as_uri(), store.url + "/../secret", "s3://elsewhere/fraud/gbm/1.skops"]:
        with pytest.raises(ArtifactRejected):
            store.get(uri)
    for key in ["../x", "/etc/passwd", "a//b", "a/./b"]:
        with pytest.raises(ValueError):
            store.put(key, b"")


@pytest.fixture
def no_deserializing(monkeypatch):
    """Any deserialization fails the test: a rejected artifact must not reach it."""
    def forbidden(*args, **kwargs):
        pytest.fail("an unverified artifact was deserialized")

    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(skops.io, "loads", forbidden)
    monkeypatch.setattr(skops.io, "get_untrusted_types", forbidden)


@pytest.mark.parametrize("library", ["sklearn", "river"])
def test_tampered_or_badly_signed_artifacts_are_never_deserialized(library, no_deserializing):
    data = dump_model(MODELS[library][0], library)
    sha, sig = digest(data), sign(data, KEY)
    tampered = bytearray(data)
    tampered[len(data) // 2] ^= 0x01  # one bit of one byte
    cases = [
        (bytes(tampered), sha, sig, KEY, "digest"),
        (bytes(tampered), sha, None, None, "digest"),  # no key: the digest still guards
        (bytes(tampered), digest(bytes(tampered)), sig, KEY, "signature"),  # record rewritten to match
        (data, sha, None, KEY, "unsigned"),
        (data, sha, sign(data, b"another key"), KEY, "signature"),
        (data, sha, "zz", KEY, "signature"),
        (data, sha, "é" * 64, KEY, "signature"),  # not even ASCII: still a rejection, not a TypeError
        (data, "é" * 64, sig, KEY, "digest"),
    ]
    for blob, sha256, signature, key, why in cases:
        with pytest.raises(ArtifactRejected, match=why):
            load_model(blob, library, sha256=sha256, signature=signature, key=key)
    assert issubclass(ArtifactRejected, LooplineError)


def test_verify_accepts_the_right_bytes():
    data = b"artifact"
    verify(data, digest(data), sign(data, KEY), KEY)
    verify(data, digest(data).upper(), None, None)  # no key: a signature is neither needed nor checked
    verify(data, digest(data), "not checked", None)
    assert digest(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    # RFC 4231, test case 2
    assert sign(b"what do ya want for nothing?", b"Jefe") == (
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")


# ---------------------------------------------------------------- lineage helpers

def test_package_versions_and_code_version(monkeypatch):
    versions = package_versions()
    assert set(versions) == {"python", "scikit-learn", "river", "numpy", "skops", "loopline"}
    assert versions["scikit-learn"] == "1.9.1" and versions["skops"] == "0.16.0"
    code_version.cache_clear()
    monkeypatch.setenv("LOOPLINE_CODE_VERSION", "v1.2.3")
    try:
        assert code_version() == "v1.2.3"
    finally:
        code_version.cache_clear()
    monkeypatch.delenv("LOOPLINE_CODE_VERSION")
    assert code_version()  # a git commit in a checkout, else the package version
