"""The monitor's on-call webhooks against the real broker, the monitor run as a real process: receivers
on 127.0.0.1 (allow-listed) that fail and recover, filters, 410, dead letters, refused URLs, and a
kill -9 in the middle of deliveries. Receivers dedup by webhook-id; every signature is checked with
the reference `standardwebhooks` package."""
from __future__ import annotations

import json
import threading
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

import httpx
import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from shared.auth import hash_key
from shared.events import Alert
from shared.kafka import header_dict
from tests.support import ServiceProcess, free_port, metric_value, produce, read_topic, wait_until

pytestmark = pytest.mark.integration

ADMIN_KEY = "monitor-admin-key"
AUTH = {"authorization": f"Bearer {ADMIN_KEY}"}
T0 = datetime(2026, 11, 26, 10, 0, tzinfo=timezone.utc)


class Receiver:
    """A webhook receiver on 127.0.0.1: `respond(path, n)` gives the status (and headers) of the n-th
    request (from 0) to that path; every request is recorded, whatever the answer."""

    def __init__(self, respond: Callable[[str, int], tuple[int, dict[str, str]]] | None = None,
                 port: int | None = None):
        self.port = port or free_port()
        self.respond = respond or (lambda path, n: (204, {}))
        self.requests: list[dict[str, Any]] = []
        self._counts: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with receiver._lock:
                    n = receiver._counts[self.path]
                    receiver._counts[self.path] += 1
                    status, headers = receiver.respond(self.path, n)
                    receiver.requests.append({"path": self.path, "status": status, "body": body,
                                              "headers": {k.lower(): v for k, v in self.headers.items()}})
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def at(self, path: str) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.requests if r["path"] == path]

    def delivered(self, path: str) -> dict[str, dict[str, Any]]:
        """The 2xx-answered requests to `path` by webhook-id (receivers dedup by it)."""
        out: dict[str, dict[str, Any]] = {}
        for r in self.at(path):
            if 200 <= r["status"] < 300:
                out.setdefault(r["headers"]["webhook-id"], r)
        return out


@pytest.fixture
def receivers():
    started: list[Receiver] = []

    def make(*args: Any, start: bool = True, **kwargs: Any) -> Receiver:
        r = Receiver(*args, **kwargs)
        started.append(r)
        return r.start() if start else r

    yield make
    for r in started:
        r.stop()


@pytest.fixture
def monitor(service_env, tmp_path):
    """Factory of monitor processes (the fraud spec, 127.0.0.1 allow-listed, small backoff); stopped at teardown."""
    started: list[ServiceProcess] = []

    def make(name: str = "m1", **extra: str) -> ServiceProcess:
        port = free_port()
        env = {**service_env, "MONITOR_PORT": str(port), "MONITOR_DATA_DIR": str(tmp_path / name),
               "MONITOR_API_KEYS": f'["{hash_key(ADMIN_KEY)}:admin"]', "MONITOR_WEBHOOK_ALLOW": '["127.0.0.1"]',
               "MONITOR_WEBHOOK_BACKOFF_S": "0.05", "MONITOR_WEBHOOK_BACKOFF_MAX_S": "0.3",
               "MONITOR_WEBHOOK_TIMEOUT_S": "5", "MONITOR_COMMIT_INTERVAL_S": "0.2", **extra}
        proc = ServiceProcess("services.monitor", env, port=port, log_dir=tmp_path, ready_timeout=180)
        started.append(proc)
        return proc

    yield make
    for proc in started:
        proc.stop()


def alerts(n: int, **over: Any) -> list[Alert]:
    """n alerts; every third one also resolves (a second record with the same fingerprint)."""
    out = []
    kinds = ["data_drift", "prediction_drift", "concept_drift", "performance", "bias", "skew"]
    for i in range(n):
        fields = dict(fingerprint=f"fp-{i}", kind=kinds[i % len(kinds)], status="firing",
                      severity=["info", "warning", "critical"][i % 3], subject=f"feature_{i}", statistic="psi",
                      value=0.3 + i / 100, threshold=0.2, window=2000, model_name=["gbm", "logreg"][i % 2],
                      model_version=1, started_at=T0 + timedelta(minutes=i), updated_at=T0 + timedelta(minutes=i))
        fields.update(over)
        out.append(Alert(**fields))
        if i % 3 == 0:
            resolved_at = fields["updated_at"] + timedelta(hours=1)
            out.append(Alert(**{**fields, "status": "resolved", "updated_at": resolved_at}))
    return out


async def send_alerts(kafka, topics, items: list[Alert]) -> None:
    await produce(kafka, topics["alerts"], [(a.fingerprint.encode(), a.model_dump_json().encode()) for a in items])


def metric(m: ServiceProcess, name: str, **labels: str) -> float:
    return metric_value(httpx.get(f"{m.url}/metrics").text, name, **labels) or 0


def subscribe(m: ServiceProcess, url: str, **fields: Any) -> dict[str, Any]:
    r = httpx.post(f"{m.url}/v1/subscriptions", json={"url": url, **fields}, headers=AUTH, timeout=10)
    assert r.status_code == 201, r.text
    return r.json()


def check_once_each(receiver: Receiver, path: str, secret: str, sent: list[Alert]) -> None:
    """After dedup by webhook-id: one delivery per alert record, each signature valid, each id's
    repeats carrying the same body; a tampered body fails."""
    got = receiver.delivered(path)
    assert len(got) == len(sent), (len(got), len(sent))
    seen = set()
    for msg_id, r in got.items():
        body = Webhook(secret).verify(r["body"], r["headers"])
        seen.add((body["data"]["fingerprint"], body["data"]["status"]))
        assert {x["body"] for x in receiver.at(path) if x["headers"]["webhook-id"] == msg_id} == {r["body"]}
    assert seen == {(a.fingerprint, a.status) for a in sent}
    r = next(iter(got.values()))
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(r["body"].replace(b'"firing"', b'"resolved"').replace(b"psi", b"PSI"), r["headers"])


async def test_receivers_that_fail_for_a_while_get_every_alert_once_after_dedup(kafka, topics, monitor, receivers):
    """One receiver answers 500, 429 (Retry-After) and 503 before it recovers; another is not even
    listening at first (connection refused). Both end with every alert once after dedup by id."""
    script = [(500, {}), (429, {"Retry-After": "1"}), (503, {}), (500, {}), (429, {"Retry-After": "0"})]
    flaky = receivers(lambda path, n: script[n] if n < len(script) else (200, {}))
    late = receivers(start=False)
    m = monitor(MONITOR_WEBHOOK_MAX_ATTEMPTS="1000").start()
    a = subscribe(m, flaky.url("/hook"))
    b = subscribe(m, late.url("/hook"), template="standard")
    sent = alerts(12)
    await send_alerts(kafka, topics, sent)

    wait_until(lambda: metric(m, "loopline_monitor_webhook_attempts_total", result="network") >= 3, 120,
               "connection refused a few times")
    late.start()
    wait_until(lambda: len(flaky.delivered("/hook")) >= len(sent) and len(late.delivered("/hook")) >= len(sent),
               180, "every alert at both receivers")
    check_once_each(flaky, "/hook", a["secret"], sent)
    check_once_each(late, "/hook", b["secret"], sent)
    assert set(flaky.delivered("/hook")).isdisjoint(late.delivered("/hook"))  # ids are per subscription
    assert {r["status"] for r in flaky.at("/hook")} >= {500, 429, 503, 200}
    wait_until(lambda: metric(m, "loopline_monitor_webhook_deliveries_total", outcome="delivered") == 2 * len(sent),
               30, "the deliveries counted")
    assert metric(m, "loopline_monitor_webhook_subscriptions", state="enabled") == 2
    m.stop()


async def test_filters_410_dead_letters_and_refused_urls(kafka, topics, monitor, receivers):
    rx = receivers(lambda path, n: {"/gone": (410, {}), "/dead": (500, {})}.get(path, (204, {})))
    m = monitor(MONITOR_WEBHOOK_MAX_ATTEMPTS="3").start()

    # refused at POST: private addresses, bad bodies, no key
    for url in ["http://10.0.0.1/hook", "http://[::1]:8080/hook", "http://169.254.169.254/latest/meta-data",
                "http://0.0.0.0/", "http://192.168.1.20/"]:
        r = httpx.post(f"{m.url}/v1/subscriptions", json={"url": url}, headers=AUTH)
        assert r.status_code == 422 and r.json()["rejected"][0]["field"] == "url", (url, r.text)
        assert r.json()["rejected"][0]["code"] == "forbidden_address"
    r = httpx.post(f"{m.url}/v1/subscriptions", json={"url": rx.url("/x"), "kinds": ["drift"]}, headers=AUTH)
    assert r.status_code == 422 and r.json()["rejected"][0]["field"] == "kinds.0"
    assert httpx.post(f"{m.url}/v1/subscriptions", json={"url": rx.url("/x")}).status_code == 401
    assert httpx.get(f"{m.url}/v1/subscriptions/sub-nope", headers=AUTH).status_code == 404

    filtered = subscribe(m, rx.url("/filtered"), kinds=["bias", "data_drift"], severities=["critical", "info"])
    by_model = subscribe(m, rx.url("/logreg"), models=["logreg"], template="slack")
    gone = subscribe(m, rx.url("/gone"))
    dead = subscribe(m, rx.url("/dead"), template="pagerduty")
    sent = alerts(12)
    await send_alerts(kafka, topics, sent)

    wanted = [a for a in sent if a.kind in ("bias", "data_drift") and a.severity in ("critical", "info")]
    logreg = [a for a in sent if a.model_name == "logreg"]
    dlq = await read_topic(kafka, topics["alerts.deliveries.dlq"], expect=len(sent), timeout_s=180)
    wait_until(lambda: len(rx.delivered("/filtered")) >= len(wanted) and len(rx.delivered("/logreg")) >= len(logreg),
               120, "the filtered subscriptions' alerts")
    check_once_each(rx, "/filtered", filtered["secret"], wanted)
    slack = [json.loads(r["body"]) for r in rx.delivered("/logreg").values()]
    assert len(slack) == len(logreg) and all("text" in s and "blocks" in s for s in slack)

    # 410: one request, then the subscription is disabled (a record on the topic) and gets nothing more
    def gone_state() -> dict[str, Any]:
        return httpx.get(f"{m.url}/v1/subscriptions/{gone['id']}", headers=AUTH).json()
    wait_until(lambda: gone_state()["disabled"], 60, "the 410 subscription disabled")
    state = gone_state()
    assert len(rx.at("/gone")) == 1
    assert state["disabled"] is True and "410" in state["disabled_reason"] and "secret" not in state

    # the permanently failing receiver: every delivery dead-lettered after 3 attempts, with its reasons
    assert len(dlq) == len(sent) and len(rx.at("/dead")) == 3 * len(sent)
    fingerprints = []
    for record in dlq:
        h = header_dict(record.headers)
        assert record.key == dead["id"].encode() and h["dlq.subscription"] == dead["id"]
        assert h["dlq.error.code"] == "max_attempts" and h["dlq.status"] == "500" and h["dlq.attempts"] == "3"
        assert "HTTP 500" in h["dlq.reason"] and h["dlq.source.topic"] == topics["alerts"]
        body = json.loads(record.value)
        assert body["event_action"] in ("trigger", "resolve")
        fingerprints.append((body["dedup_key"], body["event_action"]))
    assert sorted(fingerprints) == sorted((a.fingerprint, "trigger" if a.status == "firing" else "resolve")
                                          for a in sent)
    wait_until(lambda: metric(m, "loopline_monitor_webhook_dead_letters_total", reason="max_attempts") == len(sent),
               30, "the dead letters counted")
    assert metric(m, "loopline_monitor_webhook_subscriptions", state="disabled") == 1

    # a deleted subscription gets nothing more
    assert httpx.delete(f"{m.url}/v1/subscriptions/{by_model['id']}", headers=AUTH).status_code == 204
    ids = [s["id"] for s in httpx.get(f"{m.url}/v1/subscriptions", headers=AUTH).json()["subscriptions"]]
    assert by_model["id"] not in ids and filtered["id"] in ids
    m.stop()


async def test_a_monitor_killed_mid_delivery_loses_no_subscription_and_no_alert(kafka, topics, monitor, receivers):
    """The receiver accepts the first 4 alerts, then answers 503 to everything: the monitor is
    killed (-9) with deliveries in progress and nothing committed. A new monitor process finds the
    subscriptions (a deleted one stays deleted) and, once the receiver recovers, every alert arrives
    once after dedup."""
    healthy = threading.Event()
    rx = receivers(lambda path, n: (200, {}) if healthy.is_set() or n < 4 else (503, {}))
    # m1 commits nothing before it is killed: what it delivered comes again, with the same ids
    m1 = monitor("m1", MONITOR_WEBHOOK_MAX_ATTEMPTS="100000", MONITOR_COMMIT_INTERVAL_S="3600").start()
    keep = subscribe(m1, rx.url("/keep"))
    dropped = subscribe(m1, rx.url("/dropped"))
    assert httpx.delete(f"{m1.url}/v1/subscriptions/{dropped['id']}", headers=AUTH).status_code == 204
    sent = alerts(15)
    await send_alerts(kafka, topics, sent)
    wait_until(lambda: sum(1 for r in rx.at("/keep") if r["status"] == 503) >= 5, 120,
               "some alerts delivered and the next failing")
    m1.kill()

    m2 = monitor("m1", MONITOR_WEBHOOK_MAX_ATTEMPTS="100000").start()  # same data dir, group and topics
    subs = httpx.get(f"{m2.url}/v1/subscriptions", headers=AUTH).json()["subscriptions"]
    assert [s["id"] for s in subs] == [keep["id"]] and subs[0]["url"] == rx.url("/keep")
    healthy.set()
    wait_until(lambda: len(rx.delivered("/keep")) >= len(sent), 180, "every alert after the restart")
    check_once_each(rx, "/keep", keep["secret"], sent)  # the secret survived: signatures still verify
    assert sum(1 for r in rx.at("/keep") if r["status"] == 200) == len(sent) + 4  # the 4 redelivered
    assert not rx.at("/dropped")
    m2.stop()
