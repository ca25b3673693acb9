"""Run Loopline locally: Kafka, every service as a process, and the fraud example's traffic.

    python -m deploy.local [--events N] [--keep]      (what `make demo` runs)

Logs go to .run/logs/<service>.log. Without --keep everything is stopped at the end;
with --keep the services (and Kafka) stay up until Ctrl-C.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from dataclasses import dataclass

import httpx

from deploy.procs import KAFKA_SH, ROOT, ServiceProcess
from shared.spec import load_spec

RUN = ROOT / ".run"
SPEC = ROOT / "examples" / "fraud" / "pipeline.yaml"


@dataclass
class Service:
    name: str
    module: str
    port: int
    env: dict[str, str]


SERVICES = [
    Service("ingest", "services.ingest", 8001, {"INGEST_PORT": "8001"}),
    Service("features", "services.features", 8002, {
        "FEATURES_PORT": "8002", "FEATURES_DATA_DIR": str(RUN / "features"),
        "FEATURES_OFFLINE_URL": str(RUN / "offline")}),
    Service("trainer", "services.trainer", 8003, {
        "TRAINER_PORT": "8003", "TRAINER_DATA_DIR": str(RUN / "trainer"),
        "TRAINER_ARTIFACT_URL": str(RUN / "artifacts")}),
]


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20_000, help="transactions to send")
    parser.add_argument("--drift-at", type=int, default=None, help="event index where a new fraud pattern starts")
    parser.add_argument("--keep", action="store_true", help="keep everything running until Ctrl-C")
    parser.add_argument("--prefix", default=f"demo{int(time.time())}.", help="topic prefix of this run")
    args = parser.parse_args()

    (RUN / "logs").mkdir(parents=True, exist_ok=True)
    kafka_was_up = subprocess.run([str(KAFKA_SH), "status"], check=False).returncode == 0
    say("Kafka already running" if kafka_was_up else "starting Kafka")
    subprocess.run([str(KAFKA_SH), "start"], check=True)
    bootstrap = f"127.0.0.1:{os.environ.get('KAFKA_PORT', '9092')}"
    base_env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "LOOPLINE_TOPIC_PREFIX": args.prefix}
    procs: list[ServiceProcess] = []
    try:
        for svc in SERVICES:
            say(f"starting {svc.name} on :{svc.port}")
            proc = ServiceProcess(svc.module, {**base_env, **svc.env}, port=svc.port,
                                  log_path=RUN / "logs" / f"{svc.name}.log")
            procs.append(proc)
            try:
                proc.start()
            except (RuntimeError, TimeoutError) as exc:
                raise SystemExit(f"{svc.name} did not become ready: {exc}") from None
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
        if args.keep:
            say("running; Ctrl-C stops everything")
            try:
                while all(p.running for p in procs):
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
        return 0
    finally:
        for proc in reversed(procs):
            proc.stop()
        say("services stopped")
        if not kafka_was_up:
            subprocess.run([str(KAFKA_SH), "stop"], check=False)


if __name__ == "__main__":
    raise SystemExit(main())
