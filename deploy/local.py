"""Loopline on this machine: start and stop the local Kafka and the five services as processes, in the
foreground (`make demo`, deploy/demo.py; the tests) or detached with their pids in .run/deployment.json
(`loopline up` / `loopline down`). Logs go to .run/logs/<service>.log.
"""
from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from deploy.procs import KAFKA_SH, ROOT, ServiceProcess, pid_running, stop_pid

RUN = ROOT / ".run"
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
    write_json(STATE, state)
    return state


def read_state() -> dict | None:
    """What `loopline up` started (STATE), or None."""
    return read_json(STATE)


def read_json(path: Path) -> dict | None:
    """A JSON state file's content, or None if it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_json(path: Path, data: dict) -> None:
    """Write a JSON state file atomically (a temporary file renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)


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


