"""The SEA example end to end: examples/sea/generate.py's stream through the five services, as a
user would send it, next to river's in-process prequential run on the same stream and label delay.

As a live user: the first `warmup` events (history) go to ingest with the labels already due, since
serving has no model before the trainer's first champion. Then every event is scored with
`POST /v1/predict?forward=true` (serving forwards it to `events`, so the feature worker and the
trainer see it), and each label is posted to ingest's `/v1/labels` once its delay has passed in
stream order: just before the first event at or after its `observed_at`. The trainer learns online
and publishes a version every `publish_every` examples (or `publish_every_s`); serving swaps each in.

River in-process walks the same steps with the same model (`shared.modeling.build_model` of the
spec's candidate, the same input encoding): it learns each label where the services are sent it
and predicts where serving is asked. So the two differ only by how far the served model lags
behind the labels sent: the feature join, the trainer, the publication cadence and serving's swap.

Used by tests/integration/test_e2e_sea.py and bench/sea_loop.py.
"""
from __future__ import annotations

import os
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from deploy.free_ports import free_port
from deploy.local import local_services, start_services, stop_services
from deploy.procs import ServiceProcess, wait_until
from examples.fraud.generate import interleave
from examples.sea.generate import SeaConfig, generate
from shared.metrics import metric_value
from shared.modeling import Vectorizer, build_model, encode_label, predict_one_river
from shared.spec import PipelineSpec, load_spec

SPEC_PATH = Path(__file__).with_name("pipeline.yaml")
Steps = list[tuple[str, dict]]  # ("event" | "label", body) in the order a live system sees them


@dataclass(frozen=True)
class LoopConfig:
    stream: SeaConfig = field(default_factory=SeaConfig)
    warmup: int = 500  # events sent to ingest as history before serving can answer
    adapt: int = 500  # events after the drift counted as "right after"; the rest of the stream as "adapted"
    rate: float | None = None  # live events per wall-clock second; None: as fast as serving answers
    publish_every: int = 100  # TRAINER_PUBLISH_EVERY_EXAMPLES
    publish_every_s: float = 1.0  # TRAINER_PUBLISH_EVERY_S

    def windows(self) -> list[tuple[str, int, int]]:
        """(name, first event, end) of the stretches compared."""
        drift, end = self.stream.drift_at, self.stream.events
        return [("before drift", self.warmup, drift), ("right after", drift, drift + self.adapt),
                ("adapted", drift + self.adapt, end)]


@dataclass
class LoopResult:
    config: LoopConfig
    truth: list[int]  # per event index
    river: list[int | None]  # river in-process decision (None: a history event, not scored)
    served: list[int | None]  # serving's decision (None: history, or not answered 200)
    versions: list[int | None]  # the model version that answered
    behind: list[int] = field(default_factory=list)  # per scored event: labels sent its version had not learned
    statuses: Counter = field(default_factory=Counter)  # (route, HTTP status) -> requests
    live_s: float = 0.0  # wall time of the scored part
    total_s: float = 0.0  # from starting the services to the monitor having joined every prediction
    monitor: dict[str, float] = field(default_factory=dict)

    def accuracy(self, decisions: list[int | None], lo: int, hi: int) -> float:
        """Share of events in [lo, hi) whose decision was the label (an unanswered event counts as wrong)."""
        return sum(d == y for d, y in zip(decisions[lo:hi], self.truth[lo:hi])) / max(1, hi - lo)

    def figures(self) -> list[tuple[str, int, int, float, float]]:
        """(window, first, end, served accuracy, river accuracy) per window."""
        return [(name, lo, hi, self.accuracy(self.served, lo, hi), self.accuracy(self.river, lo, hi))
                for name, lo, hi in self.config.windows()]

    def curve(self, size: int = 250) -> list[tuple[int, float, float]]:
        """(first event, served, river) accuracy per block of `size` scored events."""
        return [(lo, self.accuracy(self.served, lo, lo + size), self.accuracy(self.river, lo, lo + size))
                for lo in range(self.config.warmup, len(self.truth), size)]

    def report(self) -> str:
        s, c = self.config.stream, self.config
        jitter = f" + up to {s.label_jitter_s:g} s" if s.label_jitter_s else ""
        lines = [f"SEA variant {s.variant_before} -> {s.variant_after} at event {s.drift_at} "
                 f"(width {s.drift_width}); "
                 f"{s.events} events: {c.warmup} history, {s.events - c.warmup} scored; label delay "
                 f"{s.label_delay_s:g} s{jitter} of event time ({s.label_delay_s * s.rate_per_s:g} events); "
                 f"a version every {c.publish_every} examples or {c.publish_every_s:g} s",
                 f"{'window':<14} {'events':>11} {'served':>7} {'river':>7} {'diff':>7}"]
        for name, lo, hi, served, river in self.figures():
            lines.append(f"{name:<14} {f'{lo}-{hi}':>11} {served:7.3f} {river:7.3f} {served - river:+7.3f}")
        versions = sorted({v for v in self.versions if v is not None}) or [0]
        behind = sorted(self.behind) or [0]
        lines += [f"served by {len(versions)} versions (v{versions[0]}-v{versions[-1]}); labels sent that the "
                  f"answering version had not learned: median {behind[len(behind) // 2]}, p95 "
                  f"{behind[int(len(behind) * 0.95)]}, max {behind[-1]} (river in-process: 0)",
                  "requests: " + ", ".join(f"{route} {status}: {n}"
                                           for (route, status), n in sorted(self.statuses.items())),
                  f"wall time: scored part {self.live_s:.1f} s ({(s.events - c.warmup) / max(self.live_s, 1e-9):.0f}"
                  f" events/s), whole run {self.total_s:.1f} s",
                  "monitor: " + ", ".join(f"{k} {v:g}" for k, v in self.monitor.items())]
        return "\n".join(lines)


def steps_of(spec: PipelineSpec, cfg: LoopConfig) -> tuple[Steps, list[int]]:
    """The stream's events and labels in live order, and each event's label (0/1) by index."""
    stream = list(generate(cfg.stream))
    return list(interleave(stream)), [encode_label(spec, label["value"]) for _, label in stream]


def river_in_process(spec: PipelineSpec, steps: Steps, warmup: int) -> list[int | None]:
    """river's prequential decisions on the same steps: learn each label where it is sent, predict
    each event after the history where serving is asked; the spec's river candidate, built and fed
    as the trainer builds and feeds it."""
    candidate = next(c for c in spec.models if c.library == "river")
    model, vectorizer = build_model(candidate, spec), Vectorizer(spec)
    inputs: dict[str, dict[str, float]] = {}
    out: list[int | None] = []
    for kind, body in steps:
        if kind == "label":
            model.learn_one(inputs.pop(body["event_id"]), encode_label(spec, body["value"]))
            continue
        x = inputs[body["event_id"]] = vectorizer.river_x({}, body)
        score = predict_one_river(model, spec.label.type, x)[0]
        out.append(int(score >= spec.serving.threshold) if len(out) >= warmup else None)
    return out


def drive(steps: Steps, cfg: LoopConfig, urls: dict[str, str], serving: ServiceProcess,
          result: LoopResult) -> None:
    """Send the steps through the services (see the module docstring); fills `result` with the served
    decisions and versions per event, how far each answering version was behind the labels sent
    (its examples, from the trainer's registry API), the requests' statuses and the wall time."""
    served, versions, statuses = result.served, result.versions, result.statuses
    learned: dict[int, int | None] = {}  # version -> examples it has learned (None: not in the registry)
    with httpx.Client(timeout=30) as http:
        def post(url: str, route: str, body) -> httpx.Response:
            r = http.post(url + route, json=body)
            statuses[route, r.status_code] += 1
            return r

        cut = [i for i, (kind, _) in enumerate(steps) if kind == "event"][cfg.warmup]
        history = steps[:cut]
        for kind in ("event", "label"):  # events first: each label after its event
            bodies = [body for k, body in history if k == kind]
            for i in range(0, len(bodies), 500):
                post(urls["ingest"], f"/v1/{kind}s", bodies[i:i + 500])
        served += [None] * cfg.warmup
        versions += [None] * cfg.warmup
        serving.wait_ready()  # the trainer's first champion, loaded
        started, due, sent = time.monotonic(), [], sum(kind == "label" for kind, _ in history)
        for kind, body in steps[cut:]:
            if kind == "label":
                due.append(body)
                continue
            if due:
                post(urls["ingest"], "/v1/labels", due)
                sent, due = sent + len(due), []
            if cfg.rate and (wait := started + (len(served) - cfg.warmup) / cfg.rate - time.monotonic()) > 0:
                time.sleep(wait)
            r = post(serving.url, "/v1/predict?forward=true", body)
            answer = r.json() if r.status_code == 200 else None
            served.append(None if answer is None else int(answer["decision"]))
            versions.append(None if answer is None else answer["model"]["version"])
            if answer is not None:
                name, version = answer["model"]["name"], answer["model"]["version"]
                if version not in learned:  # just loaded by serving: the registry still has it
                    found = http.get(f"{urls['trainer']}/v1/models/{name}/{version}")
                    learned[version] = found.json()["lineage"]["data"]["examples"] if found.is_success else None
                if learned[version] is not None:
                    result.behind.append(sent - learned[version])
        result.live_s = time.monotonic() - started
        if due:
            post(urls["ingest"], "/v1/labels", due)


def monitor_figures(monitor: ServiceProcess, scored: int, timeout_s: float = 120.0) -> dict[str, float]:
    """Once the monitor has joined every scored prediction with its label (or `timeout_s` passed):
    how many it joined and how often its detector found a concept drift in the errors."""
    def values() -> dict[str, float]:
        text = httpx.get(f"{monitor.url}/metrics", timeout=10).text
        return {"labelled predictions": metric_value(text, "loopline_monitor_labelled_predictions_total",
                                                     variant="champion") or 0.0,
                "concept drift detections":
                    metric_value(text, "loopline_monitor_concept_drift_detections_total") or 0.0}
    try:
        wait_until(lambda: values()["labelled predictions"] >= scored, timeout_s, "the monitor's joins",
                   interval=1.0)
    except TimeoutError:
        pass  # reported as it is
    return values()


def run(bootstrap: str, work: Path, cfg: LoopConfig, *, prefix: str | None = None,
        say: Callable[[str], None] = print) -> LoopResult:
    """Start the five services (free ports, state and logs under `work`, a fresh topic prefix), send
    the stream, stop them; the figures."""
    spec = load_spec(SPEC_PATH)
    steps, truth = steps_of(spec, cfg)
    river = river_in_process(spec, steps, cfg.warmup)
    result = LoopResult(cfg, truth, river, [], [])
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "LOOPLINE_SPEC_PATH": str(SPEC_PATH),
           "LOOPLINE_TOPIC_PREFIX": prefix or f"sea{uuid.uuid4().hex[:8]}.",
           "TRAINER_PUBLISH_EVERY_EXAMPLES": str(cfg.publish_every),
           "TRAINER_PUBLISH_EVERY_S": str(cfg.publish_every_s)}
    services = local_services(tuple(free_port() for _ in range(5)), work)
    started = time.monotonic()
    procs = start_services(env, services=services, report=say, log_dir=work / "logs", ready_timeout=180)
    try:
        by_name = {svc.name: proc for svc, proc in zip(services, procs)}
        say(f"services up in {time.monotonic() - started:.1f} s; sending {cfg.stream.events} events")
        drive(steps, cfg, {name: proc.url for name, proc in by_name.items()}, by_name["serving"], result)
        result.monitor = monitor_figures(by_name["monitor"], cfg.stream.events - cfg.warmup)
        result.total_s = time.monotonic() - started
    except BaseException:
        for proc in procs:
            say(f"{proc.module} log ({proc.log_path}), last lines:\n{proc.tail(15)}")
        raise
    finally:
        stop_services(procs)
    return result
