"""examples/fraud/loop.py without services: its spec, its stream, when it calls the loop closed, and
its webhook receiver's signature check."""
from __future__ import annotations

import base64
import secrets
from datetime import UTC, datetime

import httpx
from standardwebhooks import Webhook

from examples.fraud.generate import generate
from examples.fraud.loop import LoopConfig, LoopRun, Moment, Urls, WebhookReceiver, loop_spec
from shared.spec import parse_spec

URLS = Urls(*(f"http://127.0.0.1:{p}" for p in (1, 2, 3, 4, 5)))


def test_the_loop_spec_is_the_fraud_spec_with_batch_candidates_a_short_window_and_drift_triggers():
    config = LoopConfig()
    spec = parse_spec(loop_spec(config))
    assert [m.library for m in spec.models] == ["sklearn", "sklearn"]
    assert spec.training.max_examples == config.max_examples
    t = spec.training.triggers
    assert (t.on_drift, t.every_n_labels, t.schedule) == (True, None, None)
    assert spec.monitoring.data_drift.window_size == 2000 and spec.metrics.primary == "roc_auc"


def test_the_stream_is_the_same_for_the_same_config_and_drifts_at_its_point():
    config = LoopConfig(warmup=50, history=50, before=50, after=50, start="2026-01-01T00:00:00+00:00")
    first = [e for e, _ in generate(config.generator())]
    assert first == [e for e, _ in generate(LoopConfig(**{**config.__dict__}).generator())]
    assert len(first) == config.events == 200 and config.drift_at == 150
    assert LoopConfig().start < datetime.now(UTC).isoformat()  # the default stream lies in the past


def _alert(key: str, kind: str = "data_drift") -> dict:
    return {"fingerprint": key, "kind": kind}


def test_the_loop_is_closed_when_every_alert_before_the_latest_promotion_resolved_and_it_has_a_live_metric():
    run = LoopRun(LoopConfig(), URLS)
    assert not run.closed()
    run.moment("champion", "", model="gbm v1")
    run.champions.append("gbm v1")
    run.moment("alert", "", alert=_alert("a"))
    run.moment("alert", "", alert=_alert("b"))
    run.moment("alert", "", alert=_alert("s", kind="skew"))  # not a drift kind: not part of the loop
    run.moment("resolved", "", alert=_alert("a"))  # resolved before the retrain's champion came: counts
    assert not run.closed_alerts()  # no promotion after the alerts yet
    run.moment("champion", "", model="gbm v2")
    run.champions.append("gbm v2")
    assert not run.closed_alerts()  # b still firing
    run.moment("alert", "", alert=_alert("a"))
    run.moment("resolved", "", alert=_alert("b"))
    assert not run.closed_alerts()  # a fired again
    run.moment("resolved", "", alert=_alert("a"))
    run.moment("resolved", "", alert=_alert("b"))
    assert [a["fingerprint"] for a in run.closed_alerts()] == ["a", "b"]
    assert not run.closed()  # no live metric for gbm v2 yet
    run.metric_by_model["gbm v2"] = 0.93
    assert run.closed()
    assert all(isinstance(m, Moment) for m in run.moments)


def test_the_receiver_keeps_signed_alerts_and_refuses_the_rest():
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    receiver = WebhookReceiver(secret)
    try:
        alert = {"fingerprint": "a", "kind": "data_drift", "status": "firing"}
        body = httpx.Request("POST", receiver.url, json={"type": "alert.firing", "data": alert}).content
        now = datetime.now(UTC)
        signature = Webhook(secret).sign("msg_1", now, body.decode())
        headers = {"webhook-id": "msg_1", "webhook-timestamp": str(int(now.timestamp())),
                   "webhook-signature": signature, "content-type": "application/json"}
        assert httpx.post(receiver.url, content=body, headers=headers).status_code == 204
        forged = {**headers, "webhook-signature": "v1,AAAA"}
        assert httpx.post(receiver.url, content=body, headers=forged).status_code == 401
        assert receiver.alerts == [alert] and receiver.refused == 1
    finally:
        receiver.close()
