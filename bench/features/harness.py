"""What every figure of the features bench uses: a temp directory for logs and data, the worker as a
process, a fresh topic prefix with pre-produced events, the wait for the worker's label join, and
child processes and the worker's metrics."""
from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import OffsetWatcher, proc_cpu_s, unique_prefix
from bench.features.data import SPEC_PATH, produce
from deploy.free_ports import free_port
from deploy.procs import ServiceProcess
from shared.kafka import ensure_topics
from shared.settings import KafkaSettings
from shared.topics import Topics

POLL_S = 0.05  # end-offset polling interval while timing a drain


def log(msg: str) -> None:
    print(msg, flush=True)


class Harness:
    """The run's options, broker and temp directory (kept when something failed: it holds the logs)."""

    def __init__(self, args: argparse.Namespace, kafka: KafkaSettings):
        self.args, self.kafka = args, kafka
        self.tmp = Path(tempfile.mkdtemp(prefix="loopline-bench-features."))
        self.keep_tmp = False

    def worker(self, prefix: str, name: str, offline: bool = False) -> ServiceProcess:
        """`python -m services.features` on the topics of `prefix`, with its data under tmp/`name`."""
        port = free_port()
        env = {"KAFKA_BOOTSTRAP_SERVERS": self.kafka.bootstrap_servers, "LOOPLINE_TOPIC_PREFIX": prefix,
               "LOOPLINE_SPEC_PATH": str(SPEC_PATH), "FEATURES_PORT": str(port),
               "FEATURES_DATA_DIR": str(self.tmp / name / "data"), "FEATURES_OFFLINE": str(offline).lower(),
               "FEATURES_OFFLINE_URL": str(self.tmp / name / "offline"), "LOOPLINE_LOG_LEVEL": "WARNING"}
        return ServiceProcess("services.features", env, port=port, log_dir=self.tmp, ready_timeout=180)

    async def fresh_events_topic(self, name: str, items: list[tuple[bytes, bytes]]) -> Topics:
        """A fresh topic prefix whose `events` holds `items`."""
        topics = Topics(unique_prefix(name))
        await ensure_topics(self.kafka, topics)
        secs = await produce(self.kafka, topics["events"], items)
        log(f"    pre-produced {len(items):,} events into {topics['events']} in {secs:.1f} s")
        return topics

    async def join_done(self, watch: OffsetWatcher, topics: Topics, expected: int, svc: ServiceProcess,
                        first_seen: tuple[float, float | None]) -> dict | None:
        """The worker's join stream reads snapshots.by-event and writes three label-join table entries per
        snapshot (the entry and its two expiry-index keys; its changelog topic, found by name); wait until it
        has done so for every snapshot. `first_seen`: (monotonic time, worker CPU s) when its work began."""
        t_snap = time.monotonic()
        t_first, cpu_first = first_seen
        await watch.consumer._client.force_metadata_update()  # noqa: SLF001
        names = [t for t in await watch.consumer.topics()
                 if t.startswith(topics.prefix) and t.endswith(".label-join.changelog")]
        if len(names) != 1:
            log(f"    (label-join changelog topic not found: {names}; join progress not measured)")
            return None
        deadline = time.monotonic() + 60 + expected / 200
        entries = 3 * expected  # per snapshot: the join entry and its two expiry-index keys
        while (n := await watch.end(names[0])) < entries:
            if time.monotonic() > deadline or not svc.running:
                log(f"    (label join: {n:,} of {entries:,} changelog records after "
                    f"{time.monotonic() - t_snap:.0f} s; gave up; "
                    f"worker {'alive' if svc.running else 'exited'}; log {svc.log_path}:\n{svc.tail(15)})")
                self.keep_tmp = True
                return None
            await asyncio.sleep(POLL_S)
        now, cpu = time.monotonic(), proc_cpu_s(svc.proc.pid)
        return {"after_last_snapshot_s": now - t_snap, "seconds": now - t_first,
                "events_per_s": expected / (now - t_first),
                "worker_cpu_us_per_event": (cpu - cpu_first) / expected * 1e6 if cpu and cpu_first else None}


def metric_sum(text: str, name: str) -> float:
    """Sum of a Prometheus metric's samples (all label sets) in an exposition text."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (line[len(name)] in " {"):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def fetch_metrics(url: str) -> str:
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.get(f"{url}/metrics")
        return r.text


def spawn(target, *args) -> mp.Process:
    proc = mp.get_context("spawn").Process(target=target, args=args, daemon=True)
    proc.start()
    return proc


def stop_process(proc: mp.Process, timeout: float = 10.0) -> None:
    proc.join(timeout)
    if proc.is_alive():
        proc.terminate()
        proc.join(5)
