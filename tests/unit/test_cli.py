"""The `loopline` CLI against real HTTP servers (uvicorn on loopback) running the services' own routers
over in-process domain objects: the trainer's registry routes on a real `Trainer` and `Registry`, the
monitor's alert, performance and subscription routes on a real `Monitor`, `AlertBook` and subscription
store (Kafka writes replaced by a counter), and each service's real /healthz, /readyz and /metrics."""
from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
import time
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Gauge
from typer.testing import CliRunner

from cli.app import app
from cli.config import CliSettings
from cli.context import Context
from cli.status import status_app
from deploy.free_ports import free_port
from shared.auth import ApiKeys, hash_key
from shared.http import ops_router
from shared.registry import Registry
from tests.data import FRAUD, FRAUD_PATH, fitted_sklearn, fraud_training_examples, model_version

ADMIN = "k-admin-123"


@contextlib.contextmanager
def serving(http: FastAPI):
    """A FastAPI app served by uvicorn on a free loopback port, in a thread; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(http, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the test server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def trainer_http(tmp_path_factory):
    """The trainer's real routes over a real Trainer whose registry holds logreg v1 (champion) and v2."""
    from services.trainer.api import build_router
    from services.trainer.config import TrainerSettings
    from services.trainer.metrics import TrainerMetrics
    from services.trainer.service import Trainer

    store = str(tmp_path_factory.mktemp("artifacts"))
    model = fitted_sklearn(FRAUD, fraud_training_examples(300))
    registry = Registry()
    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    for version, stage, auc in ((1, "champion", 0.912), (2, "candidate", 0.934)):
        v = model_version(FRAUD, store, model, name="logreg", version=version, stage=stage)
        lineage = v.lineage.model_copy(update={"data": v.lineage.data.model_copy(update={
            "examples": 1000 * version, "start": t0, "end": t0 + timedelta(days=version)})})
        registry.apply(v.model_copy(update={"metrics": {"roc_auc": auc, "pr_auc": auc / 2},
                                            "trained_at": t0 + timedelta(days=version, hours=1),
                                            "updated_at": t0 + timedelta(days=version, hours=1),
                                            "lineage": lineage}))
    settings = TrainerSettings(artifact_url=store, data_dir=tmp_path_factory.mktemp("trainer"))
    metrics = TrainerMetrics()
    trainer = Trainer(FRAUD, settings, registry, metrics)
    emitted = []

    async def emit(records):
        emitted.extend(records)

    stream = SimpleNamespace(emit=emit, health=lambda: {"ready": True, "lag": 3, "checks": {"recovered": True}})
    http = FastAPI()
    http.include_router(build_router(stream, trainer, metrics, ApiKeys([f"{hash_key(ADMIN)}:admin"])))
    with serving(http) as url:
        yield SimpleNamespace(url=url, registry=registry, emitted=emitted)


@pytest.fixture(scope="module")
def monitor_http():
    """The monitor's real routes over a real Monitor: one data-drift alert firing, the champion's live
    roc_auc over 40 labelled predictions, subscriptions in a real store (writes counted, not sent)."""
    from services.monitor.api import build_router, subscriptions_router
    from services.monitor.config import MonitorSettings
    from services.monitor.domain import Labelled, RollingPerformance, Watch
    from services.monitor.metrics import MonitorMetrics
    from services.monitor.service import Monitor
    from services.monitor.webhooks import SubscriptionStore, UrlGuard, Webhooks

    metrics = MonitorMetrics()
    monitor = Monitor(FRAUD, MonitorSettings(), Registry(), metrics)
    fired = monitor.book.observe(Watch("data_drift", "amount", "psi", 0.2, True, "logreg", 1), 0.37, window=2000,
                                 now=datetime(2026, 11, 3, tzinfo=UTC))
    assert fired is not None
    perf = RollingPerformance(FRAUD, 40)
    for i in range(40):
        perf.rows.append(Labelled(score=0.5, predicted=i % 2, proba=None, label=i % 2))
    perf.values = {"roc_auc": 0.8765, "pr_auc": 0.5}
    monitor.performance[("logreg", 1, "champion")] = perf
    offsets = iter(range(1_000_000))

    async def send(record):
        return SimpleNamespace(offset=next(offsets))

    store = SubscriptionStore()
    store.loaded.set()
    hooks = Webhooks(store, UrlGuard(["127.0.0.1"]), send, "t.subscriptions")
    http = FastAPI()
    readiness = lambda: {"ready": False, "lag": 12, "checks": {"recovered": True, "progressing": False},  # noqa: E731
                         "problems": {"progressing": "lag stood still"}}
    http.include_router(build_router(SimpleNamespace(), monitor, metrics, readiness))
    http.include_router(subscriptions_router(hooks, ApiKeys([f"{hash_key(ADMIN)}:admin"])))
    with serving(http) as url:
        yield SimpleNamespace(url=url, store=store)


def ops_app(readiness: dict, gauge: tuple[str, float] | None = None) -> FastAPI:
    """A service's real /healthz, /readyz and /metrics routes (shared.http.ops_router)."""
    registry = CollectorRegistry()
    if gauge:
        Gauge(gauge[0], "test", registry=registry).set(gauge[1])
    http = FastAPI()
    http.include_router(ops_router(lambda: readiness, registry, "test"))
    return http


def run(settings: CliSettings, *args: str):
    import cli.context

    cli.context.console.width = cli.context.err.width = 250  # tables unwrapped, as on a wide terminal
    return CliRunner().invoke(app, list(args), obj=Context(settings))


def output(result) -> str:
    """stdout and stderr, with typer's error panel unwrapped into plain words."""
    text = result.output + (result.stderr if result.stderr_bytes else "")
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


# ---------------------------------------------------------------- help

def test_every_command_has_help():
    runner = CliRunner()
    commands = [[], ["up"], ["down"], ["status"], ["spec"], ["spec", "check"], ["replay"], ["explore"], ["models"],
                ["models", "list"], ["models", "show"], ["models", "promote"], ["models", "rollback"], ["alerts"],
                ["alerts", "list"], ["subscriptions"], ["subscriptions", "add"], ["subscriptions", "list"],
                ["subscriptions", "remove"]]
    top = runner.invoke(app, ["--help"])
    assert top.exit_code == 0
    for name in ("up", "down", "status", "spec", "replay", "models", "alerts", "subscriptions", "explore"):
        assert name in top.output
    for cmd in commands:
        r = runner.invoke(app, [*cmd, "--help"])
        assert r.exit_code == 0, (cmd, r.output)
        assert "Usage:" in r.output
        # a one-line description under the usage line, not only the options
        described = r.output.split("Usage:", 1)[1].split("\n", 2)[2].split("Options")[0].strip()
        assert described, (cmd, r.output)


# ---------------------------------------------------------------- models

def test_models_list_and_show_read_the_trainers_registry(trainer_http):
    s = CliSettings(trainer_url=trainer_http.url)
    r = run(s, "models", "list", "--json")
    assert r.exit_code == 0, output(r)
    body = json.loads(r.output)
    assert body["champion"] == {"name": "logreg", "version": 1}
    assert [(v["version"], v["stage"], v["metrics"]["roc_auc"]) for v in body["versions"]] == [
        (1, "champion", 0.912), (2, "candidate", 0.934)]
    r = run(s, "models", "list")
    assert r.exit_code == 0 and "roc_auc 0.9120" in r.output and "roc_auc 0.9340" in r.output
    assert "champion: logreg v1" in r.output
    r = run(s, "models", "show", "logreg", "2")
    assert r.exit_code == 0, output(r)
    assert "2000 examples" in r.output and "2026-11-01" in r.output and "roc_auc 0.9340" in r.output
    r = run(s, "models", "show", "logreg", "9")
    assert r.exit_code == 1 and "404" in output(r) and "logreg v9 is not in the registry" in output(r)


def test_promote_and_rollback_need_the_admin_key_and_change_the_champion(trainer_http):
    s = CliSettings(trainer_url=trainer_http.url)
    r = run(s, "models", "promote", "logreg", "2")
    assert r.exit_code == 1 and "API key is required" in output(r)
    r = run(s, "models", "promote", "logreg", "2", "--api-key", "wrong")
    assert r.exit_code == 1 and "lacks the scope" in output(r)
    r = run(s, "models", "promote", "logreg", "2", "--api-key", ADMIN)
    assert r.exit_code == 0, output(r)
    assert "logreg v2 is now champion" in r.output
    assert trainer_http.registry.champion().version == 2
    assert trainer_http.registry.get("logreg", 1).stage == "archived"
    r = run(CliSettings(trainer_url=trainer_http.url, api_key=ADMIN), "models", "rollback")  # the key from settings
    assert r.exit_code == 0, output(r)
    assert "champion: logreg v1" in r.output and trainer_http.registry.champion().version == 1
    assert {(json.loads(rec.value)["version"], json.loads(rec.value)["stage"])
            for rec in trainer_http.emitted if rec.value} >= {(2, "champion"), (1, "archived"), (1, "champion")}


def test_an_unreachable_service_is_one_line_and_exit_status_2():
    r = run(CliSettings(trainer_url=f"http://127.0.0.1:{free_port()}", timeout_s=2), "models", "list")
    assert r.exit_code == 2
    assert "cannot reach trainer" in output(r) and "Traceback" not in output(r)


# ---------------------------------------------------------------- alerts and subscriptions

def test_alerts_list_shows_what_the_monitor_has_firing(monitor_http):
    s = CliSettings(monitor_url=monitor_http.url)
    r = run(s, "alerts", "list", "--json")
    assert r.exit_code == 0, output(r)
    [alert] = json.loads(r.output)
    assert (alert["kind"], alert["subject"], alert["statistic"], alert["value"], alert["threshold"]) == (
        "data_drift", "amount", "psi", 0.37, 0.2)
    r = run(s, "alerts", "list")
    assert "data_drift" in r.output and "0.37" in r.output and "logreg v1" in r.output
    r = run(s, "alerts", "list", "--kind", "bias")
    assert r.exit_code == 0 and "no alerts firing" in r.output
    assert run(s, "alerts", "list", "--kind", "nope").exit_code == 2


def test_subscriptions_add_list_remove(monitor_http):
    s = CliSettings(monitor_url=monitor_http.url, api_key=ADMIN)
    r = run(s, "subscriptions", "add", "http://127.0.0.1:9/hook", "--kind", "data_drift", "--kind", "performance",
            "--severity", "critical", "--template", "slack", "--json")
    assert r.exit_code == 0, output(r)
    created = json.loads(r.output)
    assert created["secret"].startswith("whsec_") and created["kinds"] == ["data_drift", "performance"]
    stored = monitor_http.store.get(created["id"])
    assert stored.url == "http://127.0.0.1:9/hook" and stored.template == "slack" and stored.severities == ["critical"]
    r = run(s, "subscriptions", "list", "--json")
    assert [sub["id"] for sub in json.loads(r.output)] == [created["id"]] and "secret" not in r.output
    r = run(s, "subscriptions", "list")
    assert created["id"] in r.output and "data_drift,performance" in r.output
    # the monitor's own URL check answers through the CLI
    r = run(s, "subscriptions", "add", "http://10.1.2.3/hook")
    assert r.exit_code == 1 and "422" in output(r) and "url" in output(r)
    assert run(CliSettings(monitor_url=monitor_http.url), "subscriptions", "list").exit_code == 1  # no key
    r = run(s, "subscriptions", "remove", created["id"])
    assert r.exit_code == 0 and monitor_http.store.get(created["id"]) is None
    r = run(s, "subscriptions", "remove", created["id"])
    assert r.exit_code == 1 and "404" in output(r)


# ---------------------------------------------------------------- status

def test_status_per_service_champion_live_metric_and_alerts(trainer_http, monitor_http):
    ingest = ops_app({"ready": True, "checks": {"kafka": True}}, ("loopline_ingest_bridge_lag_records", 7))
    features = ops_app({"ready": True, "lag": 42, "checks": {"recovered": True}})
    with serving(ingest) as ingest_url, serving(features) as features_url:
        s = CliSettings(ingest_url=ingest_url, features_url=features_url, trainer_url=trainer_http.url,
                        serving_url=f"http://127.0.0.1:{free_port()}", monitor_url=monitor_http.url, timeout_s=3)
        r = run(s, "status", "--json")
        assert r.exit_code == 1, output(r)  # serving is down and the monitor is not ready
        state = json.loads(r.output)
        by = {svc["name"]: svc for svc in state["services"]}
        assert (by["ingest"]["up"], by["ingest"]["ready"], by["ingest"]["lag"]) == (True, True, 7)
        assert (by["features"]["up"], by["features"]["ready"], by["features"]["lag"]) == (True, True, 42)
        assert (by["trainer"]["up"], by["trainer"]["ready"], by["trainer"]["lag"]) == (True, True, 3)
        assert by["serving"]["up"] is False and "ConnectError" in by["serving"]["error"]
        assert (by["monitor"]["ready"], by["monitor"]["lag"]) == (False, 12)
        assert by["monitor"]["problems"] == {"progressing": "lag stood still"}
        champion = state["champion"]
        assert (champion["name"], champion["version"], champion["primary"]) == ("logreg", 1, "roc_auc")
        assert (champion["metrics"]["roc_auc"], champion["live"], champion["labelled"]) == (0.912, 0.8765, 40)
        assert [(a["kind"], a["subject"]) for a in state["alerts"]] == [("data_drift", "amount")]
        assert state["ok"] is False

        r = run(s, "status")
        assert "live 0.8765 over 40 labelled predictions" in r.output and "lag stood still" in r.output
        assert "1 alert(s) firing" in r.output

        async def get_status():  # the HTTP endpoint (`status --serve`) answers the same
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=status_app(s)), base_url="http://t") as c:
                return await c.get("/status")
        answer = asyncio.run(get_status())
        assert answer.status_code == 503
        assert {svc["name"]: svc["lag"] for svc in answer.json()["services"]} == {
            "ingest": 7, "features": 42, "trainer": 3, "serving": None, "monitor": 12}


# ---------------------------------------------------------------- spec check, replay (dry run)

def test_spec_check_reuses_the_spec_checker(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(FRAUD_PATH.read_text().replace("key: user_id", "key: nope"))
    r = CliRunner().invoke(app, ["spec", "check", str(FRAUD_PATH)])
    assert r.exit_code == 0 and "ok (fraud, 13 features, 3 models)" in r.output
    r = CliRunner().invoke(app, ["spec", "check", str(FRAUD_PATH), str(bad)])
    assert r.exit_code == 1 and "entity.key (line" in r.output and "'nope' is not an event field" in r.output


def test_replay_dry_run_reads_the_generators_file_and_refuses_labels_without_observed_at(tmp_path):
    from examples.fraud.generate import main as generate

    path = tmp_path / "stream.ndjson"
    assert generate(["--events", "200", "--seed", "3", "--out", str(path)]) == 0
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    with path.open("a") as f:
        f.write(json.dumps({"kind": "label", "body": {"event_id": "x", "value": True}}) + "\n")
    r = run(CliSettings(), "replay", str(path), "--dry-run")
    assert r.exit_code == 1, output(r)
    assert f"would replay {len(lines)} records; 1 refused" in r.output
    assert "needs observed_at" in output(r)


# ---------------------------------------------------------------- explore

def test_explore_writes_the_report_from_the_offline_store_and_the_trainers_registry(trainer_http, tmp_path):
    from cli.report import Input, column
    from shared.drift import compare_samples
    from tests.support import fraud_offline_store

    frame = fraud_offline_store(tmp_path / "offline", 1500, drift_at=750)
    out = tmp_path / "report.html"
    r = run(CliSettings(trainer_url=trainer_http.url), "explore", "--offline", str(tmp_path / "offline"),
            "--registry", "trainer", "--out", str(out))
    assert r.exit_code == 0, output(r)
    page = out.read_text()
    assert "<title>Loopline exploration: fraud</title>" in page
    for anchor in ("overview", "label-over-time", "missing", "drift", "inputs", "models"):
        assert f'<section id="{anchor}">' in page
    inputs = [d.name for d in FRAUD.features.definitions] + ["amount", "merchant_category", "country", "channel"]
    for name in inputs:
        assert f'id="input-{name}"' in page
    # one plot per input, plus label over time, missing values, PSI and the versions' metric
    assert page.count("<svg") == len(inputs) + 4
    assert not re.search(r"(src|href)=[\"']?(https?:|//)|url\([\"']?(https?:|//)|@import|<script|<link", page)
    assert "training examples: 1,500" in page  # the repeated row counted once
    assert f"{frame['is_fraud'].mean():.4g}" in page
    # the champion's lineage window holds none of these rows: the newest 20 % are recent
    assert "the oldest 80% of the rows by event time against the newest 20%: 1,200 rows" in page
    amount = column(frame, Input("amount", "numeric", "field"))
    psi = compare_samples(amount[:1200], amount[1200:], "numeric")["psi"]
    assert f"<td>amount</td><td>numeric</td><td>{psi:.4g}</td>" in page
    # the versions with their metrics
    assert "<td>logreg</td><td>2</td>" in page and "roc_auc 0.934" in page
