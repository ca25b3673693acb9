"""The closed loop on the fraud example, driven through the running services as users would drive
them, and watched: what `make demo` shows and tests/integration/test_e2e_loop.py asserts.

The stream (examples/fraud/generate.py, seeded) goes out in four parts, in event-time order:

1. warm-up: events without labels through ingest, so the 24 h feature windows are full before any
   example is labelled (a model trained on half-empty windows would see "drift" once they fill);
2. history: labelled events through ingest; the trainer fits the first champion from them;
3. live, before the drift: every event scored by serving (`POST /v1/predict?forward=true`: the
   answer, then the event goes on to the features like any other), its label posted to ingest
   once its delay has passed in the stream;
4. live, after the drift (new fraud pattern, dearer purchases, more app payments): the monitor's
   windows drift, the alert goes to the subscribed webhook, the trainer retrains on it, a better
   candidate becomes champion, serving swaps to it, the live metric recovers and the alert resolves.

Live traffic is paced (`pace` requests per second of wall time) so that the loop has time to close
while it flows; event time runs far faster (a backfill: the stream's days pass in minutes).

The spec is examples/fraud/pipeline.yaml with a few changes for a stream this short (`loop_spec`):
only the batch candidates (an online champion carries no reference statistics, so the monitor
could not watch its inputs), a training window of the latest `max_examples`, and retraining on
drift alerts only, so that every retrain in the run is one the loop caused.
"""
from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import yaml
from standardwebhooks import Webhook, WebhookVerificationError

from examples.fraud.generate import GeneratorConfig, HttpSink, generate, interleave
from shared.metrics import metric_value

SPEC_PATH = Path(__file__).resolve().parent / "pipeline.yaml"
DRIFT_KINDS = ("data_drift", "prediction_drift", "concept_drift", "performance")


@dataclass
class LoopConfig:
    """The stream and its pace; the same config always yields the same stream."""

    seed: int = 11
    users: int = 400  # ~5 transactions per user and day: a day's window of 2,000 predictions is
    rate_per_s: float = 0.023  # one day of traffic, so time-of-day effects average out
    fraud_rate: float = 0.05
    warmup: int = 3000  # ~1.5 days unlabelled: the 24 h windows are full when labels start
    history: int = 3000
    before: int = 4000  # live events before the drift
    after: int = 16000  # live events from the drift on, at most (the run stops once the loop closed)
    label_delay_mean_s: float = 1800.0
    pace: float = 150.0  # live requests per second of wall time
    max_examples: int = 4000  # the spec's training window
    start: str = ""  # event time of the first event; "" = far enough back that the stream ends now

    def __post_init__(self) -> None:
        if not self.start:
            span = (self.events / self.rate_per_s) * 1.3 + 86400
            self.start = (datetime.now(UTC) - timedelta(seconds=span)).replace(microsecond=0).isoformat()

    @property
    def events(self) -> int:
        return self.warmup + self.history + self.before + self.after

    @property
    def live_from(self) -> int:
        return self.warmup + self.history

    @property
    def drift_at(self) -> int:
        return self.live_from + self.before

    def generator(self) -> GeneratorConfig:
        return GeneratorConfig(seed=self.seed, users=self.users, events=self.events, start=self.start,
                               rate_per_s=self.rate_per_s, fraud_rate=self.fraud_rate,
                               label_delay_mean_s=self.label_delay_mean_s, drift_at=self.drift_at)


def loop_spec(config: LoopConfig, base: Path = SPEC_PATH) -> str:
    """The fraud spec as YAML, with the changes the module docstring names."""
    spec = yaml.safe_load(base.read_text())
    spec["models"] = [m for m in spec["models"] if m["library"] == "sklearn"]
    spec["training"] = {**spec["training"], "max_examples": config.max_examples,
                        "triggers": {"on_drift": True}}
    return "# examples/fraud/pipeline.yaml as examples/fraud/loop.py runs it\n" + yaml.safe_dump(spec, sort_keys=False)


# ---------------------------------------------------------------- webhook receiver

class WebhookReceiver:
    """Receives the monitor's alerts on 127.0.0.1 and verifies each signature (Standard Webhooks,
    the reference package): `alerts` holds the verified ones, `refused` counts the others."""

    def __init__(self, secret: str, port: int = 0, on_alert: Callable[[dict[str, Any]], None] | None = None):
        self.webhook = Webhook(secret)
        self.alerts: list[dict[str, Any]] = []
        self.refused = 0
        self.on_alert = on_alert
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                try:
                    payload = receiver.webhook.verify(body, {k.lower(): v for k, v in self.headers.items()})
                except WebhookVerificationError:
                    with receiver._lock:
                        receiver.refused += 1
                    self.send_response(401)
                else:
                    with receiver._lock:
                        receiver.alerts.append(payload["data"])
                    if receiver.on_alert:
                        receiver.on_alert(payload["data"])
                    self.send_response(204)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True, name="webhook-receiver").start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# ---------------------------------------------------------------- the run

@dataclass
class Served:
    """One live request: what serving answered, and the event's true label (from the stream)."""

    index: int  # the event's index in the stream
    status: int
    model: str = ""  # "name vN"
    score: float = math.nan
    label: int | None = None
    replica_lag: int = 0  # feature-state changelog records serving had not applied when it answered
    event_id: str = ""


@dataclass
class Moment:
    """A step of the loop as it happened: seconds since the run began, the live events sent by then."""

    at_s: float
    live_sent: int
    kind: str  # phase | champion | swap | alert | resolved | webhook | metric
    text: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class Urls:
    ingest: str
    features: str
    trainer: str
    serving: str
    monitor: str


class LoopRun:
    """Drives the stream through the services and records what happened (`moments`, `served`)."""

    def __init__(self, config: LoopConfig, urls: Urls, *, on_moment: Callable[[Moment], None] = lambda m: None,
                 log: Callable[[str], None] = lambda msg: None, headers: dict[str, str] | None = None):
        self.config, self.urls, self.on_moment, self.log = config, urls, on_moment, log
        self.headers = headers or {}
        self.moments: list[Moment] = []
        self.served: list[Served] = []
        self.position = 0  # stream items (events and labels) done
        self.live_sent = 0
        self.started = time.monotonic()
        self._labels: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watch: threading.Thread | None = None
        self.drift_sent_at: datetime | None = None  # when the first drifted event went to serving
        self.rejected: set[str] = set()
        self.champions: list[str] = []  # "name vN" in the order they became champion
        self.firing: dict[str, dict[str, Any]] = {}
        self.metric_by_model: dict[str, float] = {}  # the live primary metric, latest per champion version
        self.counts: dict[str, float] = {}  # from the features worker's metrics
        self.metric_history: list[tuple[int, str, float]] = []  # (live events sent, model, value) on each change

    def moment(self, kind: str, text: str, **data: Any) -> None:
        m = Moment(round(time.monotonic() - self.started, 2), self.live_sent, kind, text, data)
        with self._lock:
            self.moments.append(m)
        self.on_moment(m)

    # ------------------------------------------------------------------ subscribing

    def subscribe(self, url: str, secret: str, kinds: list[str] | None = None) -> dict[str, Any]:
        """Subscribe `url` to the monitor's alerts of `kinds` (all by default) with this signing secret."""
        r = httpx.post(f"{self.urls.monitor}/v1/subscriptions", json={"url": url, "secret": secret,
                                                                      "kinds": kinds or []},
                       headers=self.headers, timeout=10)
        r.raise_for_status()
        return r.json()

    # ------------------------------------------------------------------ sending

    def run(self, resume_from: int = 0, progress: Callable[[str, int, int], None] = lambda phase, done, total: None,
            wait_champion_s: float = 300, until: Callable[[LoopRun], bool] | None = None) -> None:
        """Send the stream (from item `resume_from`), watching the services meanwhile; after the drift,
        stop early once `until(self)` holds (checked every 100 live events), e.g. `LoopRun.closed`."""
        cfg = self.config
        self._watch = threading.Thread(target=self._watch_loop, daemon=True, name="loop-watch")
        self._watch.start()
        sink = HttpSink(self.urls.ingest, 500, cfg.events, log=self.log)
        serving = httpx.Client(base_url=self.urls.serving, timeout=30, headers=self.headers)
        index = -1
        phase = ""
        paced_from: float | None = None
        paced = 0
        warm_ids: set[str] = set()
        try:
            for item, (kind, body) in enumerate(interleave(generate(cfg.generator()))):
                if self._stop.is_set():
                    break
                if kind == "event":
                    index += 1
                    now_phase = ("warm-up" if index < cfg.warmup else "history" if index < cfg.live_from
                                 else "live" if index < cfg.drift_at else "drift")
                    if now_phase != phase:
                        phase = now_phase
                        if phase == "drift":
                            self.drift_sent_at = datetime.now(UTC)
                        if item >= resume_from:
                            self.moment("phase", {"warm-up": "warm-up: events without labels fill the feature windows",
                                                  "history": "history: labelled events through ingest",
                                                  "live": "live: every event scored by serving, then forwarded",
                                                  "drift": f"the drift starts at event {index}"}[now_phase])
                    if index < cfg.warmup:
                        warm_ids.add(body["event_id"])
                else:
                    self._labels[body["event_id"]] = int(body["value"])
                if item < resume_from:
                    continue
                if kind == "label":
                    if body["event_id"] not in warm_ids:
                        sink.add("label", body)
                elif index < cfg.live_from:
                    sink.add("event", body)
                    if index % 200 == 0:
                        progress(phase, index, cfg.live_from)
                else:
                    if paced_from is None:  # the first live event of this run: a champion must serve
                        sink.flush()
                        progress("history", cfg.live_from, cfg.live_from)
                        self.wait_for_champion(wait_champion_s)
                        paced_from = time.monotonic()
                    paced += 1
                    if (delay := paced_from + paced / cfg.pace - time.monotonic()) > 0:
                        sink.flush()  # labels waiting go out before the pause
                        time.sleep(delay)
                    self._score(serving, index, body)
                    if until is not None and index >= cfg.drift_at and paced % 100 == 0 and until(self):
                        self.moment("phase", f"the loop closed: live traffic stops after {self.live_sent} events")
                        break
                    if index % 50 == 0:
                        progress(phase, index - cfg.live_from, cfg.before + cfg.after)
                self.position = item + 1
            sink.flush()
            progress(phase, cfg.before + cfg.after, cfg.before + cfg.after)
        finally:
            sink.client.close()
            serving.close()
        for s in self.served:
            s.label = self._labels.get(s.event_id)

    def _score(self, client: httpx.Client, index: int, event: dict[str, Any]) -> None:
        try:
            r = client.post("/v1/predict", params={"forward": "true"}, json=event)
        except httpx.TransportError as exc:
            self.log(f"serving: {type(exc).__name__}: {exc}")
            self.served.append(Served(index, 0, event_id=event["event_id"]))
            return
        self.live_sent += 1
        if r.status_code != 200:
            self.log(f"serving answered {r.status_code}: {r.text[:300]}")
            self.served.append(Served(index, r.status_code, event_id=event["event_id"]))
            return
        out = r.json()
        model = f"{out['model']['name']} v{out['model']['version']}"
        previous = next((s.model for s in reversed(self.served) if s.model), None)
        self.served.append(Served(index, 200, model, float(out["score"]),
                                  replica_lag=int(out["staleness"]["replica_lag_records"]), event_id=event["event_id"]))
        if model != previous:
            self.moment("swap", f"serving answers with {model}" if previous is None
                        else f"serving swapped {previous} → {model} with no failed request",
                        model=model, previous=previous)

    def wait_for_champion(self, timeout: float) -> None:
        """Until the trainer has a champion and serving answers with one (serving's /readyz)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._stop.is_set():
            if self.champions:
                try:
                    if httpx.get(f"{self.urls.serving}/readyz", timeout=5).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
            time.sleep(0.5)
        raise TimeoutError(f"no champion served within {timeout:.0f} s")

    def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.join(timeout=10)

    # ------------------------------------------------------------------ watching

    def _watch_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                self.log(f"watch: {type(exc).__name__}: {exc}")
            self._stop.wait(0.5)

    def status(self) -> str:
        """One line: what the services have done so far."""
        champion = self.champions[-1] if self.champions else "none yet"
        metric = self.metric_by_model.get(champion)
        return (f"snapshots {self.counts.get('snapshots', 0):,.0f} · examples {self.counts.get('examples', 0):,.0f} · "
                f"champion {champion}" + (f" (live {metric:.3f})" if metric is not None else "") +
                f" · drift alerts firing {len(self.drift_firing())}")

    def poll(self) -> None:
        """One look at the features (counts), the trainer (champion) and the monitor (alerts, live metric)."""
        text = httpx.get(f"{self.urls.features}/metrics", timeout=5).text
        self.counts["snapshots"] = metric_value(text, "loopline_features_events_total", outcome="new") or 0
        self.counts["examples"] = metric_value(text, "loopline_features_training_examples_total") or 0
        models = httpx.get(f"{self.urls.trainer}/v1/models", timeout=5).json()
        champion = models.get("champion")
        if champion:
            name = f"{champion['name']} v{champion['version']}"
            if not self.champions or self.champions[-1] != name:
                self.champions.append(name)
                found = next(v for v in models["versions"]
                             if v["name"] == champion["name"] and v["version"] == champion["version"])
                metrics = ", ".join(f"{k} {v:.3f}" for k, v in sorted(found["metrics"].items()))
                self.moment("champion", f"trainer: {name} is champion ({found['reason']}); holdout {metrics}",
                            model=name, metrics=found["metrics"], reason=found["reason"])
        for v in models["versions"]:
            name = f"{v['name']} v{v['version']}"
            if v["stage"] == "rejected" and name not in self.rejected:
                self.rejected.add(name)
                self.moment("rejected", f"trainer: {name} rejected ({v['reason']})", model=name, reason=v["reason"])
        firing = {a["fingerprint"]: a for a in httpx.get(f"{self.urls.monitor}/v1/alerts", timeout=5).json()["firing"]}
        for key, a in firing.items():
            if key not in self.firing:
                self.moment("alert", f"monitor: {a['kind']} alert on {a['subject']}: {a['statistic']} "
                                     f"{a['value']:.3f} vs threshold {a['threshold']:g} ({a['severity']})", alert=a)
        for key, a in self.firing.items():
            if key not in firing:
                self.moment("resolved", f"monitor: {a['kind']} alert on {a['subject']} resolved", alert=a)
        self.firing = firing
        perf = httpx.get(f"{self.urls.monitor}/v1/performance", timeout=5).json()
        primary = perf["primary"]
        for row in perf["versions"]:
            if row["variant"] != "champion" or primary not in row["metrics"]:
                continue
            model, value = f"{row['model']} v{row['version']}", float(row["metrics"][primary])
            if self.metric_by_model.get(model) != value:
                if model not in self.metric_by_model:
                    self.moment("metric", f"monitor: live {primary} of {model}: {value:.3f} "
                                          f"(its last {row['labelled']} labelled predictions)", model=model, value=value)
                self.metric_by_model[model] = value
                self.metric_history.append((self.live_sent, model, value))

    def settle(self, timeout: float, until: Callable[[LoopRun], bool]) -> bool:
        """Keep watching (the watch thread runs on) until `until(self)` or `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if until(self):
                return True
            time.sleep(0.5)
        return until(self)

    def closed(self) -> bool:
        """The alerts the latest retrain answered have resolved and the monitor has a live metric for
        the champion it produced."""
        return bool(self.closed_alerts()) and self.champions[-1] in self.metric_by_model

    def drift_alerts(self) -> list[dict[str, Any]]:
        """The drift and performance alerts seen firing in this run (first sighting of each)."""
        return [m.data["alert"] for m in self.moments if m.kind == "alert" and m.data["alert"]["kind"] in DRIFT_KINDS]

    def drift_firing(self) -> list[dict[str, Any]]:
        return [a for a in self.firing.values() if a["kind"] in DRIFT_KINDS]

    def closed_alerts(self) -> list[dict[str, Any]]:
        """The drift alerts that fired before the latest champion was promoted (the ones its retrain
        answered), if some did and every one has resolved since; else []. (An alert that fires later,
        on the new champion, is not part of this loop: it would start the next one.)"""
        with self._lock:
            moments = list(self.moments)
        promoted = max((i for i, m in enumerate(moments) if m.kind == "champion"), default=-1)
        fired = {m.data["alert"]["fingerprint"]: m.data["alert"] for m in moments[:promoted]
                 if m.kind == "alert" and m.data["alert"]["kind"] in DRIFT_KINDS}
        state: dict[str, str] = {}  # the latest of each: fired or resolved
        for m in moments:
            if m.kind in ("alert", "resolved"):
                state[m.data["alert"]["fingerprint"]] = m.kind
        resolved = {key for key, kind in state.items() if kind == "resolved"}
        return list(fired.values()) if fired and set(fired) <= resolved else []


def served_metric(run: LoopRun) -> list[tuple[str, str, tuple[int, float]]]:
    """ROC AUC of the served scores against the stream's labels, before the drift and after it, per
    model that answered: (stretch, model, (requests, auc))."""
    from sklearn.metrics import roc_auc_score

    groups: dict[tuple[str, str], list[Served]] = {}
    for s in run.served:
        if s.status == 200 and s.label is not None:
            stretch = "before the drift" if s.index < run.config.drift_at else "after the drift"
            groups.setdefault((stretch, s.model), []).append(s)
    out = []
    for (stretch, model), rows in groups.items():
        y = [s.label for s in rows]
        auc = float(roc_auc_score(y, [s.score for s in rows])) if 0 < sum(y) < len(y) else math.nan
        out.append((stretch, model, (len(rows), auc)))
    return out
