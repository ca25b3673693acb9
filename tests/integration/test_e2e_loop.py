"""End to end: the five services as real processes on the real broker, the fraud example's closed loop
driven through them as `make demo` drives it (examples/fraud/loop.py), every step of the loop asserted."""
from __future__ import annotations

import base64
import os
import secrets
from datetime import datetime

import pytest

from deploy.local import local_services, start_services, stop_services
from examples.fraud.loop import DRIFT_KINDS, LoopConfig, LoopRun, Urls, WebhookReceiver, loop_spec, served_metric
from tests.support import free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def loop(kafka_bootstrap, prefix, tmp_path):
    config = LoopConfig(pace=200)
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(loop_spec(config))
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "LOOPLINE_TOPIC_PREFIX": prefix,
           "LOOPLINE_SPEC_PATH": str(spec_path), "MONITOR_WEBHOOK_ALLOW": '["127.0.0.1"]'}
    svcs = local_services(tuple(free_port() for _ in range(5)), tmp_path)
    procs = start_services(env, services=svcs, detach=True, report=print, log_dir=tmp_path / "logs")
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    receiver = WebhookReceiver(secret)
    run = LoopRun(config, Urls(*(p.url for p in procs)), on_moment=lambda m: print(f"{m.at_s:7.1f}s {m.live_sent:6d} "
                                                                                   f"{m.kind}: {m.text}"), log=print)
    run.subscribe(receiver.url, secret, kinds=list(DRIFT_KINDS))
    try:
        yield run, receiver
    finally:
        run.stop()
        receiver.close()
        stop_services(procs)
        for p in procs:
            print(f"--- {p.module} log tail\n{p.tail(15)}")


def test_the_fraud_loop_closes(loop):
    run, receiver = loop
    cfg = run.config
    run.run(until=LoopRun.closed)
    closed = run.settle(120, LoopRun.closed)
    for stretch, model, (n, auc) in served_metric(run):
        print(f"served {stretch:16s} {model:10s} {n:5d} requests  ROC AUC {auc:.3f}")
    minimum = 0.75  # the fraud spec's metrics.minimum (roc_auc)

    # a champion serves, and every live request is answered, before, during and after the swap
    assert run.served and all(s.status == 200 for s in run.served), [s for s in run.served if s.status != 200][:5]
    first = run.served[0].model
    assert first == run.champions[0]

    # the live metric before the drift meets the spec (the monitor's, over labelled predictions made
    # before the drift point, and the same recomputed here from the served scores)
    before = [v for sent, model, v in run.metric_history if model == first and sent <= cfg.before]
    assert before and min(before) >= minimum, run.metric_history
    served = {(stretch, model): auc for stretch, model, (n, auc) in served_metric(run)}
    assert served[("before the drift", first)] >= minimum

    # drift alerts fire, all after the first drifted event was sent, none before
    alerts = run.drift_alerts()
    assert alerts, "no drift alert fired"
    assert all(datetime.fromisoformat(a["started_at"]) >= run.drift_sent_at for a in alerts), alerts

    # the webhook receiver got them, signed (verified with the reference standardwebhooks package)
    fired = {a["fingerprint"] for a in receiver.alerts if a["status"] == "firing"}
    assert {a["fingerprint"] for a in alerts} <= fired
    assert receiver.refused == 0

    # the retrain on the alert produced a new champion that beat the old one on the same holdout
    assert len(run.champions) >= 2, run.champions
    promoted = [m for m in run.moments if m.kind == "champion"][1:]
    assert promoted[0].data["model"] == run.champions[1]
    assert all("beats the champion" in m.data["reason"] for m in promoted), [m.text for m in promoted]
    latest = run.champions[-1]

    # serving swapped to each with no failed request (checked above), in the order they were promoted,
    # the first swap after the drift
    models = [s.model for s in run.served]
    blocks = [m for i, m in enumerate(models) if i == 0 or models[i - 1] != m]
    assert blocks == [m for m in run.champions if m in models], blocks
    assert run.served[models.index(run.champions[1])].index >= cfg.drift_at

    # the live metric recovers: the monitor's for the latest champion meets the spec and is above the
    # old champion's after the drift; recomputed from the served scores, the same order
    after_old = [v for sent, model, v in run.metric_history if model == first and sent > cfg.before + 2000]
    after_new = [v for sent, model, v in run.metric_history if model == latest]
    assert after_new and min(after_new) >= minimum, run.metric_history
    assert not after_old or after_new[-1] > min(after_old)
    assert served[("after the drift", latest)] > served[("after the drift", first)]

    # and the alerts the retrain answered resolved (each resolution delivered, signed, to the receiver too)
    assert closed, f"firing: {run.drift_firing()}"
    keys = {a["fingerprint"] for a in run.closed_alerts()}
    assert run.settle(30, lambda r: keys <= {a["fingerprint"] for a in receiver.alerts if a["status"] == "resolved"})
    assert receiver.refused == 0
