"""Run Loopline locally: Kafka, every service as a process, and the fraud example's traffic:
events and labels through ingest, features, training, then live predictions through serving
(forwarded to `events`), watched by the monitor.

    python -m deploy.local [--events N] [--keep]      (what `make demo` runs)

Logs go to .run/logs/<service>.log. Without --keep everything is stopped at the end;
with --keep the services (and Kafka) stay up until Ctrl-C.

The pieces (start and stop the local broker and the services, in the foreground or detached with
their pids in .run/deployment.json) are functions that `loopline up` / `loopline down` share.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx

from deploy.procs import KAFKA_SH, ROOT, ServiceProcess, pid_running, stop_pid
from shared.spec import load_spec

RUN = ROOT / ".run"
SPEC = ROOT / "examples" / "fraud" / "pipeline.yaml"
STATE = RUN / "deployment.json"  # what `loopline up` started, for `loopline down` and `status`


@dataclass
class Service:
    name: str
    module: str
    port: int
    env: dict[str, str]
    wait_ready: bool = True


PORTS = (8001, 8002, 8003, 8004, 8005)  # ingest, features, trainer, serving, monitor


def local_services(ports: tuple[int, int, int, int, int] = PORTS, run: Path = RUN) -> list[Service]:
    """The five services on `ports` (ingest, features, trainer, serving, monitor), their state under `run`."""
    ingest, features, trainer, serving, monitor = (str(p) for p in ports)
    return [
        Service("ingest", "services.ingest", int(ingest), {"INGEST_PORT": ingest}),
        Service("features", "services.features", int(features), {
            "FEATURES_PORT": features, "FEATURES_DATA_DIR": str(run / "features"),
            "FEATURES_OFFLINE_URL": str(run / "offline")}),
        Service("trainer", "services.trainer", int(trainer), {
            "TRAINER_PORT": trainer, "TRAINER_DATA_DIR": str(run / "trainer"),
            "TRAINER_ARTIFACT_URL": str(run / "artifacts")}),
        # ready once a champion is loaded: the demo waits for it after training
        Service("serving", "services.serving", int(serving), {
            "SERVING_PORT": serving, "SERVING_DATA_DIR": str(run / "serving"),
            "SERVING_ARTIFACT_URL": str(run / "artifacts")}, wait_ready=False),
        Service("monitor", "services.monitor", int(monitor), {
            "MONITOR_PORT": monitor, "MONITOR_DATA_DIR": str(run / "monitor")}),
    ]


SERVICES = local_services()


def say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def show_champion(timeout: float = 300) -> None:
    """Wait until the trainer has a champion and a version of every model in the spec, then show
    the newest version of each."""
    deadline = time.monotonic() + timeout
    say("waiting for the trainer: a champion and a version of every model")
    while time.monotonic() < deadline:
        models = httpx.get("http://127.0.0.1:8003/v1/models", timeout=5).json()
        newest = {v["name"]: v for v in models["versions"]}  # versions come ordered by name, version
        champion = models["champion"]
        if champion and len(newest) >= len(load_spec(os.environ.get("LOOPLINE_SPEC_PATH", SPEC)).models):
            for v in newest.values():
                shown = ", ".join(f"{k} {val:.3f}" for k, val in sorted(v["metrics"].items()))
                say(f"model {v['name']} v{v['version']} ({v['library']}, {v['evaluation']}): {v['stage']}; {shown}")
            say(f"champion: {champion['name']} v{champion['version']}")
            return
        time.sleep(2)
    say("not every model has a version yet; see .run/logs/trainer.log")


def serve_live(serving: ServiceProcess, n: int) -> None:
    """Score `n` new transactions through serving (forwarded to `events`, as a client that makes
    one call), then show latency, a sample answer and what the monitor sees."""
    import statistics

    sys.path.insert(0, str(ROOT / "examples" / "fraud"))
    from generate import GeneratorConfig, generate

    say("waiting for serving to load the champion and catch up with the feature state")
    serving.wait_ready()
    took, last = [], None
    with httpx.Client(base_url=serving.url, timeout=10) as client:
        start = datetime.fromtimestamp(time.time() - 2 * n - 60, UTC).isoformat()  # n events at 1/s: all past
        stream = generate(GeneratorConfig(seed=7, events=n, start=start, rate_per_s=1.0))
        for event, _label in stream:
            started = time.perf_counter()
            r = client.post("/v1/predict", params={"forward": "true"}, json=event)
            took.append((time.perf_counter() - started) * 1000)
            if r.status_code != 200:
                say(f"serving answered {r.status_code}: {r.text[:300]}")
                return
            last = r.json()
    took.sort()
    say(f"{len(took)} live predictions: p50 {statistics.median(took):.2f} ms, "
        f"p99 {took[int(len(took) * 0.99) - 1]:.2f} ms (one client, keep-alive)")
    if last:
        say(f"last answer: score {last['score']:.4f}, decision {last['decision']}, model {last['model']['name']} "
            f"v{last['model']['version']}, state as of {last['staleness']['state_event_time']}")
    alerts = httpx.get("http://127.0.0.1:8005/v1/alerts", timeout=5).json()["firing"]
    say(f"monitor: {len(alerts)} alert(s) firing" + "".join(f"; {a['kind']} {a['subject']} {a['statistic']}="
                                                           f"{a['value']:.3f}" for a in alerts[:5]))


def wait_caught_up(bootstrap: str, prefix: str, timeout: float = 300) -> None:
    """Until every event has its snapshot (and show progress while waiting)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counts = asyncio.run(topic_counts(bootstrap, prefix, ["events", "features"]))
        if counts["features"] >= counts["events"]:
            return
        say(f"features: {counts['features']}/{counts['events']} snapshots")
        time.sleep(2)
    say("the feature worker did not catch up in time; see .run/logs/features.log")


async def topic_counts(bootstrap: str, prefix: str, names: list[str]) -> dict[str, int]:
    """Records per topic (end minus start offsets over the catalogue's partitions)."""
    from aiokafka import TopicPartition

    from shared.kafka import make_consumer
    from shared.settings import KafkaSettings
    from shared.topics import CATALOGUE

    consumer = make_consumer(KafkaSettings(bootstrap_servers=bootstrap), group_id=None)
    await consumer.start()
    try:
        out = {}
        for name in names:
            parts = [TopicPartition(prefix + name, p) for p in range(CATALOGUE[name].partitions)]
            ends, begins = await consumer.end_offsets(parts), await consumer.beginning_offsets(parts)
            out[name] = sum(ends[p] - begins[p] for p in parts)
        return out
    finally:
        await consumer.stop()


def kafka_running() -> bool:
    """Whether the local broker (deploy/kafka/kafka.sh, KAFKA_PORT) answers."""
    return subprocess.run([str(KAFKA_SH), "status"], check=False, capture_output=True).returncode == 0


def start_kafka() -> bool:
    """Start the local broker unless it runs; True if it was running already."""
    was_up = kafka_running()
    subprocess.run([str(KAFKA_SH), "start"], check=True)
    return was_up


def stop_kafka() -> None:
    subprocess.run([str(KAFKA_SH), "stop"], check=False)


def local_bootstrap() -> str:
    return f"127.0.0.1:{os.environ.get('KAFKA_PORT', '9092')}"


def start_services(base_env: dict[str, str], *, detach: bool = False, services: list[Service] | None = None,
                   report=say, log_dir: Path = RUN / "logs", ready_timeout: float = 60.0) -> list[ServiceProcess]:
    """Start the services in order, each up (and ready where it waits for that) before the next;
    `detach`: in their own sessions, so they outlive this process (`loopline up`). On a failure the
    ones started are stopped and SystemExit says which did not come up."""
    log_dir.mkdir(parents=True, exist_ok=True)
    procs: list[ServiceProcess] = []
    for svc in services or SERVICES:
        report(f"starting {svc.name} on :{svc.port}")
        proc = ServiceProcess(svc.module, {**base_env, **svc.env}, port=svc.port,
                              log_path=log_dir / f"{svc.name}.log", ready_timeout=ready_timeout)
        procs.append(proc)
        try:
            proc.start(wait_ready=svc.wait_ready, detach=detach)
            proc.wait_up()
        except (RuntimeError, TimeoutError) as exc:
            stop_services(procs)
            raise SystemExit(f"{svc.name} did not become ready: {exc}") from None
    return procs


def stop_services(procs: list[ServiceProcess]) -> None:
    """SIGTERM each (newest first), SIGKILL after 30 s."""
    for proc in reversed(procs):
        proc.stop()


def up(prefix: str, *, kafka: bool = True, report=say) -> dict:
    """Start the local deployment detached (`loopline up`): the local broker (unless `kafka` is
    False: then KAFKA_* name the cluster) and every service; what was started goes to STATE."""
    if (state := read_state()) and any(pid_running(s["pid"], s["module"]) for s in state["services"].values()):
        raise SystemExit(f"a deployment started by `loopline up` is running (see {STATE}); `loopline down` first")
    kafka_started = False
    if kafka:
        kafka_started = not start_kafka()
        report("started Kafka" if kafka_started else "Kafka already running")
    bootstrap = local_bootstrap() if kafka else os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    base_env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "LOOPLINE_TOPIC_PREFIX": prefix}
    try:
        procs = start_services(base_env, detach=True, report=report)
    except SystemExit:
        if kafka_started:
            stop_kafka()
        raise
    state = {"prefix": prefix, "bootstrap": bootstrap, "kafka_started": kafka_started,
             "offline": str(RUN / "offline"), "started_at": datetime.now(UTC).isoformat(),
             "services": {svc.name: {"pid": proc.proc.pid, "module": svc.module, "port": svc.port,
                                     "url": proc.url, "log": str(proc.log_path)}
                          for svc, proc in zip(SERVICES, procs)}}
    STATE.write_text(json.dumps(state, indent=2))
    return state


def read_state() -> dict | None:
    """What `loopline up` started (STATE), or None."""
    try:
        return json.loads(STATE.read_text())
    except (OSError, ValueError):
        return None


def down(*, keep_kafka: bool = False, report=say) -> list[str]:
    """Stop what `up` started (newest service first; SIGTERM, SIGKILL after 30 s) and the broker if
    `up` started it; returns the names of the services that were running."""
    state = read_state()
    if state is None:
        report(f"nothing to stop: no {STATE}")
        return []
    stopped = []
    for name, svc in reversed(list(state["services"].items())):
        if stop_pid(svc["pid"], svc["module"]):
            report(f"stopped {name} (pid {svc['pid']})")
            stopped.append(name)
    if state.get("kafka_started") and not keep_kafka:
        report("stopping Kafka")
        stop_kafka()
    STATE.unlink(missing_ok=True)
    return stopped


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20_000, help="transactions to send")
    parser.add_argument("--drift-at", type=int, default=None, help="event index where a new fraud pattern starts")
    parser.add_argument("--live", type=int, default=500, help="live transactions scored through serving")
    parser.add_argument("--keep", action="store_true", help="keep everything running until Ctrl-C")
    parser.add_argument("--prefix", default=f"demo{int(time.time())}.", help="topic prefix of this run")
    args = parser.parse_args()

    kafka_was_up = kafka_running()
    say("Kafka already running" if kafka_was_up else "starting Kafka")
    start_kafka()
    bootstrap = local_bootstrap()
    base_env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "LOOPLINE_TOPIC_PREFIX": args.prefix}
    procs: list[ServiceProcess] = []
    try:
        procs = start_services(base_env)
        say(f"all services ready; topics prefixed '{args.prefix}'; logs in .run/logs/")
        cmd = [sys.executable, "examples/fraud/generate.py", "--events", str(args.events),
               "--ingest-url", "http://127.0.0.1:8001"]
        if args.drift_at is not None:
            cmd += ["--drift-at", str(args.drift_at)]
        say("sending the fraud example's transactions and labels: " + " ".join(cmd[1:]))
        sent = subprocess.run(cmd, cwd=ROOT, env=base_env)
        if sent.returncode != 0:
            say("the traffic generator failed")
            return sent.returncode
        say("waiting for the feature worker to catch up")
        wait_caught_up(bootstrap, args.prefix)
        counts = asyncio.run(topic_counts(bootstrap, args.prefix, [
            "events", "labels", "features", "training-examples", "events.dlq"]))
        say("records per topic: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
        say(f"offline store (Parquet): {RUN / 'offline'}")
        show_champion()
        serve_live(procs[SERVICES.index(next(s for s in SERVICES if s.name == "serving"))], args.live)
        if args.keep:
            say("running; Ctrl-C stops everything")
            try:
                while all(p.running for p in procs):
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
        return 0
    finally:
        stop_services(procs)
        say("services stopped")
        if not kafka_was_up:
            stop_kafka()


if __name__ == "__main__":
    raise SystemExit(main())
