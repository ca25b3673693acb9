"""Every HTTP service does what its OpenAPI document says: schemathesis, all checks, against real
processes and the real broker (ingest, the feature worker's HTTP API, the trainer, serving).

Each run covers the coverage, fuzzing and stateful phases with positive and negative data and
`--checks all`: no 5xx (not_a_server_error), status codes, content types, headers and bodies as
documented, invalid data refused and valid data accepted. Routes behind an API key are fuzzed twice:
with the key (and `ignored_auth`: the document declares the security the route enforces) and without
it (every answer 401 or 403). schemathesis_hooks.py keeps generated event times out of the future, so
the fuzzer reaches ingest's publishing and serving's scoring paths, and points trainer cases at
versions that are in the registry.

A fixed seed keeps CI reproducible; set LOOPLINE_FUZZ_SEED to explore other inputs and
LOOPLINE_FUZZ_EXAMPLES to change the examples per operation.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from shared.auth import hash_key
from tests.data import FRAUD, fitted_sklearn, fraud_training_examples, model_version
from tests.support import ServiceProcess, free_port, metric_value, produce, read_topic, wait_until

pytestmark = pytest.mark.integration

HOOKS = Path(__file__).with_name("schemathesis_hooks.py")
EXAMPLES = int(os.environ.get("LOOPLINE_FUZZ_EXAMPLES", "0")) or None
KEY = "fuzz-s3cret-key"  # the configured key of the trainer (admin) and serving (predict)


def fuzz(url: str, tmp_path: Path, *, examples: int, operations: int, key: str | None = None,
         unauthenticated: bool = False, include_path_regex: str | None = None,
         env: dict[str, str] | None = None) -> str:
    """Run schemathesis over a service's /openapi.json; fail on any issue it reports. `operations` is
    how many operations the run must select and test. The output, for further assertions."""
    run_dir = tmp_path / f"fuzz-{'noauth' if unauthenticated else 'auth'}"
    run_dir.mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "schemathesis.cli", "run", f"{url}/openapi.json",
           "--checks", "all", "--max-examples", str(EXAMPLES or examples), "--workers", "1", "--no-color",
           "--generation-database", "none", "--request-timeout", "30", "--report-dir", str(run_dir),
           "--seed", os.environ.get("LOOPLINE_FUZZ_SEED", "20261202")]
    if key is not None:
        cmd += ["--header", f"Authorization: Bearer {key}"]
    if unauthenticated:  # valid data refused (401), and warned about, is what must happen here
        cmd += ["--exclude-checks", "positive_data_acceptance", "--warnings", "off"]
    if include_path_regex is not None:
        cmd += ["--include-path-regex", include_path_regex]
    run_env = {**os.environ, "SCHEMATHESIS_HOOKS": str(HOOKS),
               "LOOPLINE_FUZZ_UNAUTHENTICATED": "1" if unauthenticated else "0", **(env or {})}
    # cwd: schemathesis keeps a crash cache (.schemathesis/) in the working directory, not in the repo
    run = subprocess.run(cmd, cwd=run_dir, env=run_env, capture_output=True, text=True, timeout=300)
    out = run.stdout + run.stderr
    (run_dir / "schemathesis.txt").write_text(out)
    assert run.returncode == 0, out[-20000:]
    assert "Selected: " in out and f"Tested: {operations}" in out, out[-5000:]
    assert "No issues found" in out, out[-5000:]
    return out


def service(module: str, env: dict[str, str], tmp_path: Path, port_var: str) -> ServiceProcess:
    port = free_port()
    return ServiceProcess(module, {**env, port_var: str(port)}, port=port, log_dir=tmp_path, ready_timeout=180)


async def publish_versions(kafka, topics, tmp_path: Path, *stages: str, key: bytes | None = None) -> list:
    """Versions 1.. of a fitted logistic regression named `logreg` in the registry, in these stages."""
    model = fitted_sklearn(FRAUD, fraud_training_examples(600, seed=5))
    versions = [model_version(FRAUD, str(tmp_path / "artifacts"), model, name="logreg", version=i + 1, stage=stage,
                              key=key) for i, stage in enumerate(stages)]
    await produce(kafka, topics["models"], [(v.key.encode(), v.model_dump_json().encode()) for v in versions])
    return versions


def test_ingest(service_env, topics, tmp_path):
    """Events -> labels by event id in the stateful phase; accepted requests really reach Kafka and return
    202. NDJSON bodies have no serializer in schemathesis and are not generated; test_ingest.py covers them."""
    svc = service("services.ingest", service_env, tmp_path, "INGEST_PORT").start()
    try:
        fuzz(svc.url, tmp_path, examples=60, operations=5)
        metrics = httpx.get(f"{svc.url}/metrics").text
        for kind in ("event", "label"):
            assert (metric_value(metrics, "loopline_ingest_accepted_total", kind=kind, source="http") or 0) > 0, \
                f"no {kind} was accepted"
    finally:
        svc.stop()


def test_features(worker, topics, tmp_path):
    """The feature worker's HTTP API: /healthz, /readyz, /metrics."""
    w = worker().start()
    fuzz(w.url, tmp_path, examples=20, operations=3)
    assert w.running


async def test_trainer(service_env, kafka, topics, tmp_path):
    """The registry and the admin routes, on a registry with a champion, a challenger and a shadow
    (promote, stage and rollback run for real); then the admin routes without the key."""
    await publish_versions(kafka, topics, tmp_path, "champion", "challenger", "shadow", key=b"sign-me")
    env = {**service_env, "TRAINER_DATA_DIR": str(tmp_path / "trainer"),
           "TRAINER_ARTIFACT_URL": str(tmp_path / "artifacts"), "TRAINER_SIGNING_KEY": "sign-me",
           "TRAINER_API_KEYS": f'["{hash_key(KEY)}:admin"]'}
    t = service("services.trainer", env, tmp_path, "TRAINER_PORT").start()
    try:
        wait_until(lambda: len(httpx.get(f"{t.url}/v1/models").json()["versions"]) == 3, 60, "the registry")
        versions = {"LOOPLINE_FUZZ_VERSIONS": "logreg:1,logreg:2,logreg:3"}
        fuzz(t.url, tmp_path, examples=40, operations=9, key=KEY, env=versions)
        changes = await read_topic(kafka, topics["models"], idle_s=1.0)
        assert len(changes) > 3, "no promote, stage or rollback reached the registry"
        fuzz(t.url, tmp_path, examples=20, operations=4, unauthenticated=True, env=versions,
             include_path_regex="^/v1/(retrain|rollback|models/.+/.+/(promote|stage))$")
        assert t.running
    finally:
        t.stop()


async def test_serving(service_env, kafka, topics, worker, tmp_path):
    """Scoring with a champion loaded and the feature state caught up (/readyz true before fuzzing), a
    challenger and a shadow too; then the predict routes without the key."""
    w = worker().start()
    await publish_versions(kafka, topics, tmp_path, "champion", "challenger", "shadow")
    env = {**service_env, "SERVING_DATA_DIR": str(tmp_path / "serving"),
           "SERVING_ARTIFACT_URL": str(tmp_path / "artifacts"), "SERVING_API_KEYS": f'["{hash_key(KEY)}:predict"]'}
    s = service("services.serving", env, tmp_path, "SERVING_PORT").start()  # waits for /readyz
    try:
        assert httpx.get(f"{s.url}/readyz").json()["ready"] is True
        fuzz(s.url, tmp_path, examples=40, operations=6, key=KEY)
        metrics = httpx.get(f"{s.url}/metrics").text
        for route in ("/v1/predict", "/v1/predict/batch"):
            scored = metric_value(metrics, "loopline_serving_requests_total", route=route, status="200")
            assert (scored or 0) > 0, f"the fuzzer never reached the scoring path of {route}"
        fuzz(s.url, tmp_path, examples=20, operations=2, unauthenticated=True, include_path_regex="^/v1/predict")
        assert s.running and w.running
    finally:
        s.stop()
