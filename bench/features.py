#!/usr/bin/env python
"""Feature worker: throughput vs a bare aiokafka loop, freshness at a steady rate, memory per entity.

    deploy/with-kafka.sh env PYTHONPATH=. .venv/bin/python bench/features.py [--events N] [--rounds R]
        [--entities E] [--rate R] [--skip-freshness] [--skip-memory] [--profile S] [--json]
    make bench        (deploy/run-bench.sh: every bench/*.py against a throwaway broker)

For the fraud example's 13 features (examples/fraud/pipeline.yaml):
 1. throughput of `python -m services.features` (a real faust worker process) draining N pre-produced
    Event envelopes: events/s from the first to the N-th snapshot on `<prefix>features`;
 2. side by side, a bare aiokafka consume -> compute -> produce loop in its own process doing the same
    per-event work (orjson, engine load/apply/dump, 3 records sent per fetch through the batch API, ack wait, commit);
 3. freshness: ingest acknowledgement (HTTP 202) -> snapshot on `features`, at a steady rate through
    `python -m services.ingest`, in rounds of a worker run and a bare-loop run (order alternating) after
    an unreported warm-up run;
 4. memory: worker RSS before/after E events of E distinct entities.
The broker, the worker(s), the ingest service and this load generator share the machine's cores.

The default run (2 rounds + offline round, 2 freshness rounds at 1,000/s, 200,000 entities) takes
~6 minutes here; `--entities 1000000` about 3 more. Worker logs are kept (path
printed) when something fails.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson  # noqa: E402
from aiokafka import AIOKafkaConsumer, TopicPartition  # noqa: E402
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # noqa: E402

from bench.common import (  # noqa: E402
    ROOT, CpuMeter, OffsetWatcher, broker_pid, fast_httpx_without_sniffio, machine, median, proc_cpu_s,
    require_kafka, sigterm_as_exit, spread, table, unique_prefix,
)
from examples.fraud.generate import GeneratorConfig, generate  # noqa: E402
from services.features.domain import entity_key, process_event  # noqa: E402
from shared.events import EventValidator  # noqa: E402
from shared.features import FeatureEngine  # noqa: E402
from shared.kafka import (  # noqa: E402
    OutRecord, consume_batches, ensure_topics, make_consumer, make_producer, send_batched, wait_for_leaders,
)
from shared.serialization import dumps, loads, utcnow  # noqa: E402
from shared.settings import KafkaSettings  # noqa: E402
from shared.spec import load_spec  # noqa: E402
from shared.topics import Topics  # noqa: E402
from tests.support import ServiceProcess, free_port  # noqa: E402

SPEC_PATH = ROOT / "examples" / "fraud" / "pipeline.yaml"
GOAL_EVENTS_PER_S = 5000.0
GOAL_RATIO = 0.5
GOAL_P99_MS = 50.0
POLL_S = 0.05  # end-offset polling interval while timing a drain
SHARED_CORES = (f"The broker, the feature worker (or the bare loop), the ingest service and this load generator "
                f"all run on this machine and share its {os.cpu_count()} cores; figures include that contention.")


BARE_EXPLAIN = """\
worker: `python -m services.features` (faust, offline writer off unless noted), N events pre-produced into a fresh
  prefix's `events`; events/s from the first to the N-th snapshot on `features` (end offsets polled every 50 ms).
  "incl. join": until the worker's label-join table changelog also holds 2N records (its second agent reads
  snapshots.by-event and writes two table entries per snapshot: the join entry and its expiry-index key).
bare loop: a separate process (multiprocessing spawn, default asyncio loop like the worker) on the same
  pre-produced topic: shared.kafka.make_consumer (own group, manual commit per batch, 1000 records/poll), per
  event orjson loads + services.features.domain.process_event (engine.load/apply/dump, the worker's function)
  + 3 records (features, snapshots.by-event keyed by event_id, state bytes to a compacted topic) sent like the
  worker sends them (aiokafka's batch API: one record batch per topic partition per fetch; acks=all), then
  await every ack of the batch and commit.
  It has no label join, no RocksDB, no metrics: the same per-event work as the worker's first agent."""


def log(msg: str) -> None:
    print(msg, flush=True)


# ---------------------------------------------------------------- data

class Data:
    """Validated `Event` envelopes of the fraud generator, as (key, value bytes), like ingest writes them."""

    def __init__(self, n: int, seed: int = 42, users: int = 1000):
        spec = load_spec(SPEC_PATH)
        self.spec, self.validator, self.engine = spec, EventValidator(spec), FeatureEngine(spec)
        self.raw = [e for e, _ in generate(GeneratorConfig(seed=seed, users=users, events=n))]
        now = utcnow()
        self.items: list[tuple[bytes, bytes]] = []
        for e in self.raw:
            record = self.validator.envelope(self.validator.validate(dict(e)), source="http", ingested_at=now)
            self.items.append((self.validator.kafka_key(record), dumps(record)))
        self.users = len({e["user_id"] for e in self.raw})

    def compute_only(self) -> dict[str, Any]:
        """The per-event work in this process, no Kafka: the ceiling of a one-process Python worker.

        Also counts the snapshots the stream must emit (late events are dead-lettered, not snapshotted)."""
        states: dict[bytes, bytes] = {}
        statuses: Counter = Counter()
        t0 = time.perf_counter()
        for key, value in self.items:
            record = loads(value)
            k = entity_key(record).encode()
            out = process_event(self.engine, states.get(k), record)
            statuses[out.status] += 1
            if out.state is not None:
                states[k] = out.state
            if out.snapshot is not None:
                dumps(out.snapshot)
        secs = time.perf_counter() - t0
        sizes = [len(s) for s in states.values()]
        return {"events": len(self.items), "seconds": secs, "events_per_s": len(self.items) / secs,
                "statuses": dict(statuses), "snapshots": statuses["new"] + statuses["duplicate"],
                "state_bytes_mean": sum(sizes) / len(sizes), "state_bytes_max": max(sizes)}


def distinct_entity_items(validator: EventValidator, templates: list[dict], start: int, n: int,
                          now: datetime) -> list[tuple[bytes, bytes]]:
    """n events, each of its own entity (user_id m<i>), fields copied from generated templates."""
    out = []
    for i in range(start, start + n):
        e = dict(templates[i % len(templates)])
        e["user_id"], e["event_id"] = f"m{i:08d}", f"mem-{i}"
        record = validator.envelope(validator.validate(e), source="http", ingested_at=now)
        out.append((validator.kafka_key(record), dumps(record)))
    return out


async def produce(kafka: KafkaSettings, topic: str, items: list[tuple[bytes, bytes]], producer=None) -> float:
    """Send every (key, value); wait for all acks. Seconds taken."""
    own = producer is None
    if own:
        producer = make_producer(kafka, linger_ms=5)
        await producer.start()
    try:
        t0 = time.perf_counter()
        futures = [await producer.send(topic, value, key=key) for key, value in items]
        await asyncio.gather(*futures)
        return time.perf_counter() - t0
    finally:
        if own:
            await producer.stop()


async def create_topic(kafka: KafkaSettings, name: str, partitions: int, configs: dict[str, str]) -> None:
    """A topic outside the catalogue (the bare loop's changelog stand-in)."""
    admin = AIOKafkaAdminClient(**kafka.client_kwargs())
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, kafka.replication_factor, topic_configs=configs)])
        await wait_for_leaders(admin, [name], time.monotonic() + 10)
    finally:
        await admin.close()


# ---------------------------------------------------------------- process helpers

def rss_kib(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile of a process in KiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[k] = int(v.split()[0])
    return out


def dir_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


def metric_sum(text: str, name: str) -> float:
    """Sum of a Prometheus metric's samples (all label sets) in an exposition text."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (line[len(name)] in " {"):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def fetch_metrics(url: str) -> str:
    import httpx
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


# ---------------------------------------------------------------- the bare loop (child process)

def bare_loop_main(bootstrap: str, events_topic: str, out_prefix: str, group: str, total: int) -> None:
    """Child-process entry: consume -> compute -> 3 records -> await acks -> commit, per batch, until
    `total` events were processed. Default asyncio loop, like the faust worker."""
    os.environ["KAFKA_BOOTSTRAP_SERVERS"] = bootstrap
    asyncio.run(_bare_loop(KafkaSettings(), events_topic, out_prefix, group, total))


async def _bare_loop(kafka: KafkaSettings, events_topic: str, out_prefix: str, group: str, total: int) -> None:
    engine = FeatureEngine(load_spec(SPEC_PATH))
    topics = Topics(out_prefix)
    features_t, by_event_t, changelog_t = topics["features"], topics["snapshots.by-event"], out_prefix + "entity-state"
    await create_topic(kafka, changelog_t, topics.spec_of(topics["events"]).partitions, {"cleanup.policy": "compact"})
    consumer = make_consumer(kafka, events_topic, group_id=group)  # manual commit, read_committed, 1000/poll
    # the worker's producer: acks=all (producer_acks=-1), 256 KiB batches, not idempotent (its linger does
    # not apply: send_batched hands over closed record batches)
    producer = make_producer(kafka, linger_ms=5, enable_idempotence=False)
    await consumer.start()
    await producer.start()
    states: dict[bytes, bytes] = {}
    done = 0
    finished = asyncio.Event()

    async def handle(records: list) -> None:
        nonlocal done
        out: list[OutRecord] = []
        for msg in records:
            done += 1
            record = loads(msg.value)
            key = entity_key(record).encode()
            res = process_event(engine, states.get(key), record)
            if res.status == "late":
                continue
            if res.state is not None:
                states[key] = res.state
                out.append(OutRecord(changelog_t, key, res.state))
            if res.snapshot is not None:
                value = dumps(res.snapshot)
                out.append(OutRecord(features_t, key, value))
                out.append(OutRecord(by_event_t, record["event_id"].encode(), value))
        # aiokafka's batch API, as the worker uses: one record batch per topic partition
        await asyncio.gather(*await send_batched(producer, out))
        if done >= total:
            finished.set()

    try:
        await consume_batches(consumer, handle, stop=finished)  # commits each batch after its acks
    finally:
        await producer.stop()
        await consumer.stop()


# ---------------------------------------------------------------- load generator's HTTP client

class HttpPool:
    """A lean HTTP/1.1 client for the load generator: `size` keep-alive connections, one request at a
    time on each. httpx cost this process ~3-6 ms CPU per request (0.3-0.6 of a core at 100 requests/s,
    measured), taken from the worker and broker it measures; ingest (uvicorn) answers with a
    Content-Length, which is all this reads."""

    def __init__(self, host: str, port: int, size: int):
        self.host, self.port, self.size = host, port, size
        self.idle: asyncio.Queue = asyncio.Queue()

    async def __aenter__(self) -> HttpPool:
        for _ in range(self.size):
            self.idle.put_nowait(await asyncio.open_connection(self.host, self.port))
        return self

    async def __aexit__(self, *exc) -> None:
        while not self.idle.empty():
            self.idle.get_nowait()[1].close()

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        reader, writer = await self.idle.get()
        try:
            writer.write(f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            data = await reader.readexactly(length)
        except BaseException:
            writer.close()  # the connection's state is unknown: replace it
            self.idle.put_nowait(await asyncio.open_connection(self.host, self.port))
            raise
        self.idle.put_nowait((reader, writer))
        return status, data


# ---------------------------------------------------------------- snapshot reader (child process)

def snapshot_reader_main(bootstrap: str, topic: str, events_topic: str, conn) -> None:
    """Child-process entry: reads `topic` (snapshots) and `events_topic` from their ends; after "stop"
    sends back [(event_id, recv, ts_ms)] of the snapshots and {event_id: ts_ms} of the event records."""
    os.environ["KAFKA_BOOTSTRAP_SERVERS"] = bootstrap
    asyncio.run(_snapshot_reader(KafkaSettings(), topic, events_topic, conn))


async def _snapshot_reader(kafka: KafkaSettings, topic: str, events_topic: str, conn) -> None:
    consumer = AIOKafkaConsumer(**kafka.client_kwargs(), enable_auto_commit=False, fetch_max_wait_ms=100,
                                isolation_level="read_committed")
    await consumer.start()
    got: list[tuple[str, float, int]] = []
    events: dict[str, int] = {}
    try:
        tps = []
        for name in (topic, events_topic):
            for _ in range(100):
                parts = consumer.partitions_for_topic(name)
                if parts:
                    break
                await consumer._client.force_metadata_update()  # noqa: SLF001
                await asyncio.sleep(0.1)
            tps += [TopicPartition(name, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        for tp in tps:
            await consumer.position(tp)  # resolve the end now, before anything is sent
        conn.send("ready")
        while not conn.poll():
            batches = await consumer.getmany(timeout_ms=50)
            now = time.time()
            for tp, recs in batches.items():
                for msg in recs:
                    if tp.topic == topic:
                        got.append((orjson.loads(msg.value)["event_id"], now, msg.timestamp))
                    else:
                        events[orjson.loads(msg.value)["event_id"]] = msg.timestamp
        conn.send((got, events))
    finally:
        await consumer.stop()


# ---------------------------------------------------------------- the run

@dataclass
class Drain:
    """A timed drain of pre-produced events: first -> last snapshot on the output topic."""

    name: str
    round: int
    events: int
    seconds: float
    startup_s: float  # process start -> first snapshot seen
    cpu_s: dict[str, float | None]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.events / self.seconds


class Bench:
    def __init__(self, args: argparse.Namespace, kafka: KafkaSettings):
        self.args, self.kafka = args, kafka
        self.tmp = Path(tempfile.mkdtemp(prefix="loopline-bench-features."))
        self.drains: list[Drain] = []
        self.results: dict[str, Any] = {}
        self.profile: dict[str, Any] | None = None
        self.first_seen: tuple[float, float | None] = (0.0, None)
        self.keep_tmp = False

    # ------------------------------------------------------------ helpers

    def worker(self, prefix: str, name: str, offline: bool = False) -> ServiceProcess:
        port = free_port()
        env = {"KAFKA_BOOTSTRAP_SERVERS": self.kafka.bootstrap_servers, "LOOPLINE_TOPIC_PREFIX": prefix,
               "LOOPLINE_SPEC_PATH": str(SPEC_PATH), "FEATURES_PORT": str(port),
               "FEATURES_DATA_DIR": str(self.tmp / name / "data"), "FEATURES_OFFLINE": str(offline).lower(),
               "FEATURES_OFFLINE_URL": str(self.tmp / name / "offline"), "LOOPLINE_LOG_LEVEL": "WARNING"}
        return ServiceProcess("services.features", env, port=port, log_dir=self.tmp, ready_timeout=180)

    async def timed_drain(self, watch: OffsetWatcher, topic: str, base: int, target: int, pid: int,
                          alive, spawned: float, timeout_s: float) -> tuple[float, float, int, dict]:
        """Poll `topic` end offsets until base+target; (seconds first->last, startup, n at first, cpu).
        self.first_seen = (monotonic time, process CPU s) at the first record seen."""
        first: tuple[float, int] | None = None
        meter: CpuMeter | None = None
        deadline = time.monotonic() + timeout_s
        last_print = time.monotonic()
        while True:
            n = await watch.end(topic) - base
            now = time.monotonic()
            if first is None and n > 0:
                first, meter = (now, n), CpuMeter({"service": pid, "broker": broker_pid()}).start()
                self.first_seen = (now, proc_cpu_s(pid))
            if n >= target:
                break
            if now > deadline:
                raise TimeoutError(f"{topic}: {n:,} of {target:,} snapshots after {timeout_s:.0f} s")
            if not alive():
                raise RuntimeError(f"the process under test exited with {n:,} of {target:,} snapshots")
            if first is not None and now - last_print > 10:
                last_print = now
                log(f"    ... {n:,}/{target:,} snapshots, {(n - first[1]) / (now - first[0]):,.0f} ev/s so far")
            await asyncio.sleep(POLL_S)
        assert first is not None and meter is not None
        return now - first[0], first[0] - spawned, first[1], meter.stop()

    async def fresh_events_topic(self, name: str, items: list[tuple[bytes, bytes]]) -> Topics:
        topics = Topics(unique_prefix(name))
        await ensure_topics(self.kafka, topics)
        secs = await produce(self.kafka, topics["events"], items)
        log(f"    pre-produced {len(items):,} events into {topics['events']} in {secs:.1f} s")
        return topics

    # ------------------------------------------------------------ 1. the worker

    async def worker_drain(self, watch: OffsetWatcher, data: Data, expected: int, round_no: int, *,
                           offline: bool = False, topics: Topics | None = None,
                           profile_s: float = 0.0) -> tuple[Drain, Topics]:
        name = "worker+offline" if offline else ("worker (profiled)" if profile_s else "worker")
        log(f"  round {round_no}: {name}")
        topics = topics or await self.fresh_events_topic("features", data.items)
        svc = self.worker(topics.prefix, f"w{round_no}{'o' if offline else ''}{'p' if profile_s else ''}", offline)
        spawned = time.monotonic()
        await asyncio.to_thread(svc.start, False)
        prof_task = None
        try:
            if profile_s:
                prof_task = asyncio.create_task(self.py_spy(svc.proc.pid, profile_s, watch, topics["features"]))
            secs, startup, n_first, cpu = await self.timed_drain(
                watch, topics["features"], 0, expected, svc.proc.pid, lambda: svc.proc.poll() is None, spawned,
                timeout_s=180 + expected / 100)
            join = await self.join_done(watch, topics, expected, svc) if self.args.join_wait else None
            text = await fetch_metrics(svc.url)
            counted = metric_sum(text, "loopline_features_events_total")
            if prof_task is not None:
                self.profile = await prof_task
        except BaseException:
            log(f"worker log ({svc.log_path}):\n{svc.tail(30)}")
            raise
        finally:
            if prof_task is not None and not prof_task.done():
                prof_task.cancel()
            await asyncio.to_thread(svc.stop)
        d = Drain(name, round_no, expected - n_first, secs, startup, cpu,
                  {"events_total_metric": counted, "offline": offline, "join": join})
        self.report_drain(d)
        if join:
            log(f"    label join (snapshots.by-event -> label-join table) done {join['after_last_snapshot_s']:.1f} s after "
                f"the last snapshot: all work {join['events_per_s']:,.0f} ev/s, "
                f"{join['worker_cpu_us_per_event'] or 0:,.0f} µs worker CPU/event")
        return d, topics

    async def join_done(self, watch: OffsetWatcher, topics: Topics, expected: int, svc: ServiceProcess) -> dict | None:
        """The worker's join agent reads snapshots.by-event and writes two label-join table entries per
        snapshot (entry + expiry-index key; its changelog topic, found by name); wait until it has done so for every snapshot."""
        t_snap = time.monotonic()
        t_first, cpu_first = self.first_seen
        await watch.consumer._client.force_metadata_update()  # noqa: SLF001
        names = [t for t in await watch.consumer.topics()
                 if t.startswith(topics.prefix) and t.endswith("-label-join-changelog")]
        if len(names) != 1:
            log(f"    (label-join changelog topic not found: {names}; join progress not measured)")
            return None
        deadline = time.monotonic() + 60 + expected / 200
        entries = 2 * expected  # per snapshot: the join entry and its expiry-index key
        while (n := await watch.end(names[0])) < entries:
            if time.monotonic() > deadline or svc.proc.poll() is not None:
                log(f"    (label join: {n:,} of {entries:,} changelog records after {time.monotonic() - t_snap:.0f} s; gave up; "
                    f"worker {'alive' if svc.proc.poll() is None else 'exited'}; log {svc.log_path}:\n{svc.tail(15)})")
                self.keep_tmp = True
                return None
            await asyncio.sleep(POLL_S)
        now, cpu = time.monotonic(), proc_cpu_s(svc.proc.pid)
        return {"after_last_snapshot_s": now - t_snap, "seconds": now - t_first, "events_per_s": expected / (now - t_first),
                "worker_cpu_us_per_event": (cpu - cpu_first) / expected * 1e6 if cpu and cpu_first else None}

    # ------------------------------------------------------------ 2. the bare loop

    async def bare_drain(self, watch: OffsetWatcher, topics: Topics, n_events: int, expected: int,
                         round_no: int, record: bool = True) -> Drain:
        log(f"  round {round_no}: bare aiokafka loop{'' if record else ' (broker warm-up, not counted)'}")
        out_prefix = topics.prefix + "bare."
        out = Topics(out_prefix)
        await ensure_topics(self.kafka, out, names=[out["features"], out["snapshots.by-event"]])
        spawned = time.monotonic()
        proc = spawn(bare_loop_main, self.kafka.bootstrap_servers, topics["events"], out_prefix,
                     f"{out_prefix}bare.{round_no}", n_events)
        try:
            secs, startup, n_first, cpu = await self.timed_drain(
                watch, out["features"], 0, expected, proc.pid, proc.is_alive, spawned, timeout_s=180 + expected / 100)
        finally:
            stop_process(proc)
        d = Drain("bare loop", round_no, expected - n_first, secs, startup, cpu)
        if record:
            self.report_drain(d)
        return d

    def report_drain(self, d: Drain) -> None:
        self.drains.append(d)
        svc = d.cpu_s.get("service")
        per = f", {svc / d.events * 1e6:,.0f} µs CPU/event in the process" if svc is not None else ""
        log(f"    {d.events:,} snapshots in {d.seconds:.2f} s = {d.rate:,.0f} ev/s (first snapshot "
            f"{d.startup_s:.1f} s after start{per}; other load {d.cpu_s.get('other') or 0:.1f} CPU-s)")

    async def throughput(self, data: Data, expected: int) -> None:
        a = self.args
        async with OffsetWatcher(self.kafka) as watch:
            # A fresh broker JIT-compiles for its first ~30 s of load (C2 threads took several CPU-s):
            # warm it with one uncounted bare drain so that round 1's worker does not pay for it.
            warm = await self.fresh_events_topic("warmup", data.items)
            await self.bare_drain(watch, warm, len(data.items), expected, 0, record=False)
            for r in range(1, a.rounds + 1):
                wd, topics = await self.worker_drain(watch, data, expected, r)
                await self.bare_drain(watch, topics, len(data.items), expected, r)
            if a.offline_round:
                await self.worker_drain(watch, data, expected, a.rounds + 1, offline=True)
            if a.profile:
                await self.worker_drain(watch, data, expected, a.rounds + 2, profile_s=a.profile)

    # ------------------------------------------------------------ profile

    async def py_spy(self, pid: int, seconds: float, watch: OffsetWatcher, topic: str) -> dict[str, Any]:
        """Once the worker emits snapshots, py-spy it for `seconds` (while it still drains)."""
        while await watch.end(topic) == 0:
            await asyncio.sleep(0.05)
        out = self.tmp / f"py-spy-{pid}.txt"
        exe = Path(sys.executable).parent / "py-spy"
        proc = await asyncio.create_subprocess_exec(
            str(exe if exe.exists() else "py-spy"), "record", "-p", str(pid), "-d", str(int(seconds)),
            "-f", "raw", "-o", str(out), "--nonblocking", "-r", "100",
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, err = await proc.communicate()
        if proc.returncode != 0 or not out.exists():
            return {"error": err.decode(errors="replace")[-500:]}
        if self.args.profile_out:
            shutil.copy(out, self.args.profile_out)
        return aggregate_py_spy(out.read_text(), seconds)

    # ------------------------------------------------------------ 3. freshness

    async def freshness(self, rate: float, duration_s: float, warm_s: float = 3.0, bare: bool = False) -> dict[str, Any]:
        """ingest ack -> snapshot at a steady rate, through the worker or (bare=True) the bare loop."""
        topics = Topics(unique_prefix("freshness"))
        await ensure_topics(self.kafka, topics)
        ingest_port = free_port()
        ingest = ServiceProcess("services.ingest", {
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka.bootstrap_servers, "LOOPLINE_TOPIC_PREFIX": topics.prefix,
            "LOOPLINE_SPEC_PATH": str(SPEC_PATH), "INGEST_PORT": str(ingest_port), "LOOPLINE_LOG_LEVEL": "WARNING",
        }, port=ingest_port, log_dir=self.tmp)
        worker = self.worker(topics.prefix, f"fresh{int(rate)}", offline=self.args.freshness_offline)
        per_batch = self.args.batch
        bare_proc: mp.Process | None = None
        interval = per_batch / rate
        n_batches = int((warm_s + duration_s) * rate / per_batch)
        n_warm = int(warm_s * rate / per_batch)
        # event time advancing as fast as the events are sent: concurrent requests that overtake
        # each other by a few hundred ms must not make an entity's event late (allowed lateness 5 min
        # in event time; at the generator's default 0.5 events per event-time second it was 150 ms)
        raw = [e for e, _ in generate(GeneratorConfig(seed=7, users=1000, events=n_batches * per_batch, rate_per_s=rate))]
        bodies = [(i, orjson.dumps(raw[i * per_batch:(i + 1) * per_batch])) for i in range(n_batches)]
        acks: dict[str, float] = {}
        measured_ids: set[str] = set()
        failures: Counter = Counter()
        lateness: list[float] = []  # how late each request left vs its schedule
        conn_parent, conn_child = mp.get_context("spawn").Pipe()
        reader = None
        try:
            if bare:
                log(f"  freshness at {rate:,.0f} events/s: starting ingest and the bare loop")
                await asyncio.to_thread(ingest.start)
                bare_proc = spawn(bare_loop_main, self.kafka.bootstrap_servers, topics["events"], topics.prefix,
                                  f"{topics.prefix}bare.fresh", n_batches * per_batch)
                await asyncio.sleep(3)  # joined its group and positioned (it reads from the start anyway)
            else:
                log(f"  freshness at {rate:,.0f} events/s: starting ingest and the worker "
                    f"(offline writer {'on' if self.args.freshness_offline else 'off'})")
                await asyncio.gather(asyncio.to_thread(ingest.start), asyncio.to_thread(worker.start))
            reader = spawn(snapshot_reader_main, self.kafka.bootstrap_servers, topics["features"], topics["events"],
                           conn_child)
            if not await asyncio.to_thread(conn_parent.poll, 60):
                raise RuntimeError("snapshot reader did not start")
            conn_parent.recv()
            meter = CpuMeter({"bare loop" if bare else "worker": bare_proc.pid if bare_proc else worker.proc.pid,
                              "ingest": ingest.proc.pid, "reader": reader.pid,
                              "broker": broker_pid()}).start()
            meter_t0 = time.monotonic()
            async with HttpPool("127.0.0.1", ingest_port, size=32) as client:
                async def post(i: int, body: bytes) -> None:
                    try:
                        status, text = await asyncio.wait_for(client.post("/v1/events", body), 30)
                    except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError) as exc:
                        failures[f"client {type(exc).__name__}"] += 1  # counted: an overloaded run still reports
                        return
                    t = time.time()
                    if status != 202:
                        failures[f"{status} {text[:100]!r}"] += 1
                        return
                    ids = orjson.loads(text)["event_ids"]
                    for eid in ids:
                        acks[eid] = t
                    if i >= n_warm:
                        measured_ids.update(ids)

                log(f"    sending {n_batches * per_batch:,} events: {per_batch} per POST every "
                    f"{interval * 1000:.1f} ms for {warm_s + duration_s:.0f} s (first {warm_s:.0f} s = warm-up)")
                tasks = []
                t0 = time.monotonic()
                for i, body in bodies:
                    due = t0 + i * interval
                    delay = due - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    lateness.append(time.monotonic() - due)
                    tasks.append(asyncio.create_task(post(i, body)))
                send_s = time.monotonic() - t0 + interval  # schedule span: the last request left at send_s - interval
                await asyncio.gather(*tasks)
                acked_s = time.monotonic() - t0
            # wait for the snapshots of every acknowledged event (or give up after 30 s)
            async with OffsetWatcher(self.kafka) as watch:
                deadline = time.monotonic() + 30
                while (end := await watch.end(topics["features"])) < len(acks) and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                await asyncio.sleep(0.5)
                if end < len(acks) and not bare:
                    log(f"    only {end:,} snapshots on {topics['features']} for {len(acks):,} acknowledged events "
                        f"after 30 s ({await watch.end(topics['events']):,} on {topics['events']}, "
                        f"{await watch.end(topics['events.dlq']):,} dead-lettered); "
                        f"worker log ({worker.log_path}):\n{worker.tail(40)}")
            cpu = meter.stop()
            cpu_wall = time.monotonic() - meter_t0
            conn_parent.send("stop")
            got, produced = await asyncio.to_thread(conn_parent.recv)
            text = "" if bare else await fetch_metrics(worker.url)
        except BaseException:
            if not bare:
                log(f"worker log ({worker.log_path}):\n{worker.tail(20)}")
            log(f"ingest log:\n{ingest.tail(20)}")
            raise
        finally:
            if reader is not None:
                stop_process(reader, 5)
            if bare_proc is not None:
                stop_process(bare_proc)
            await asyncio.gather(asyncio.to_thread(worker.stop), asyncio.to_thread(ingest.stop))

        by_id = {}
        for eid, recv, ts_ms in got:
            by_id.setdefault(eid, (recv, ts_ms / 1000))
        lat_recv, lat_ts, lat_rec, order = [], [], [], []
        for eid in measured_ids:
            if eid in by_id:
                recv, ts = by_id[eid]
                lat_recv.append((recv - acks[eid]) * 1000)
                lat_ts.append((ts - acks[eid]) * 1000)
                # from the event record's timestamp: ingest's producer stamps it when the record is queued,
                # before the broker's ack and the 202; so an upper bound of ack -> snapshot that does not
                # depend on when the load generator got round to reading the 202
                rec = (recv - produced[eid] / 1000) * 1000
                lat_rec.append(rec)
                order.append((acks[eid], rec))
        order.sort()
        q = max(1, len(order) // 4)
        first_q = median([x for _, x in order[:q]]) if order else float("nan")
        last_q = median([x for _, x in order[-q:]]) if order else float("nan")
        missing = len(measured_ids) - len(lat_recv)
        achieved = n_batches * per_batch / send_s
        sustained = (not failures and missing == 0 and achieved >= 0.95 * rate
                     and last_q <= max(250.0, 3 * first_q))
        res = {
            "run": "bare loop" if bare else "worker", "rate_target": rate, "rate_achieved": achieved, "measured": len(lat_recv), "missing": missing,
            "warm_up_events": n_warm * per_batch, "failures": dict(failures),
            "recv_ms": pct(lat_recv), "timestamp_ms": pct(lat_ts), "event_record_ms": pct(lat_rec),
            "negative_recv": sum(1 for x in lat_recv if x < 0),
            "first_quarter_p50_ms": first_q, "last_quarter_p50_ms": last_q, "sustained": sustained,
            "send_late_p99_ms": pct([x * 1000 for x in lateness])["p99"],
            "cpu_s": cpu, "cpu_wall_s": cpu_wall, "seconds": send_s, "all_acked_s": acked_s,
            "worker_metric_latency_mean_ms": 1000 * metric_sum(text, "loopline_features_snapshot_latency_seconds_sum")
            / max(1.0, metric_sum(text, "loopline_features_snapshot_latency_seconds_count")),
        }
        r, t, e = res["recv_ms"], res["timestamp_ms"], res["event_record_ms"]
        log(f"    {len(lat_recv):,} events measured ({missing} without snapshot), sent at {achieved:,.0f}/s: "
            f"event record->snapshot received p50 {e['p50']:.1f} / p99 {e['p99']:.1f} / max {e['max']:.1f} ms; "
            f"202 seen by the client->snapshot received p50 {r['p50']:.1f} / p99 {r['p99']:.1f} / max {r['max']:.1f} ms; "
            f"ack->snapshot record timestamp p50 {t['p50']:.1f} / p99 {t['p99']:.1f} ms; "
            f"{'sustained' if sustained else 'NOT sustained'} (median latency first quarter {first_q:.1f} ms, "
            f"last quarter {last_q:.1f} ms)")
        return res

    # ------------------------------------------------------------ 4. memory

    async def memory(self, data: Data, entities: int, warm: int = 2000) -> dict[str, Any]:
        topics = Topics(unique_prefix("memory"))
        await ensure_topics(self.kafka, topics)
        svc = self.worker(topics.prefix, "memory")
        data_dir = self.tmp / "memory" / "data"
        now = utcnow()
        samples: list[tuple[int, int]] = []
        log(f"  memory: worker with {entities:,} events of distinct entities (after a {warm:,}-event warm-up)")
        producer = make_producer(self.kafka, linger_ms=5)
        await producer.start()
        try:
            await asyncio.to_thread(svc.start)
            pid = svc.proc.pid
            async with OffsetWatcher(self.kafka) as watch:
                await produce(self.kafka, topics["events"],
                              distinct_entity_items(data.validator, data.raw, 0, warm, now), producer)
                await watch.wait_end(topics["features"], warm, timeout_s=120, poll_s=0.1)
                await asyncio.sleep(3)
                before, disk_before = rss_kib(pid), dir_bytes(data_dir)
                log(f"    before: VmRSS {before['VmRSS'] / 1024:,.1f} MiB")
                t0 = time.monotonic()
                chunk = 10_000
                pending = None
                next_sample = 0
                for start in range(warm, warm + entities, chunk):
                    items = await asyncio.to_thread(distinct_entity_items, data.validator, data.raw, start,
                                                    min(chunk, warm + entities - start), now)
                    if pending is not None:
                        await pending
                    pending = asyncio.create_task(produce(self.kafka, topics["events"], items, producer))
                    n = await watch.end(topics["features"]) - warm
                    if n >= next_sample:
                        samples.append((n, rss_kib(pid)["VmRSS"]))
                        next_sample = n + max(chunk, entities // 10)
                    if svc.proc.poll() is not None:
                        raise RuntimeError(f"worker exited: {svc.tail()}")
                if pending is not None:
                    await pending
                last_print = time.monotonic()
                while (n := await watch.end(topics["features"]) - warm) < entities:
                    if time.monotonic() - t0 > 120 + entities / 100:
                        raise TimeoutError(f"memory: {n:,} of {entities:,} snapshots")
                    if n >= next_sample:
                        samples.append((n, rss_kib(pid)["VmRSS"]))
                        next_sample = n + max(chunk, entities // 10)
                    if time.monotonic() - last_print > 15:
                        last_print = time.monotonic()
                        log(f"    ... {n:,}/{entities:,} snapshots, VmRSS {rss_kib(pid)['VmRSS'] / 1024:,.0f} MiB")
                    await asyncio.sleep(0.2)
                secs = time.monotonic() - t0
                at_snapshots = rss_kib(pid)
                # the label join lags behind a backlog: measure once it holds every snapshot too
                self.first_seen = (t0, proc_cpu_s(pid))
                join = await self.join_done(watch, topics, warm + entities, svc)
                await asyncio.sleep(3)
                after, disk_after = rss_kib(pid), dir_bytes(data_dir)
                samples.append((entities, after["VmRSS"]))
        except BaseException:
            log(f"worker log ({svc.log_path}):\n{svc.tail(20)}")
            raise
        finally:
            await producer.stop()
            await asyncio.to_thread(svc.stop)
        grow = (after["VmRSS"] - before["VmRSS"]) / 1024
        res = {"entities": entities, "seconds": secs, "events_per_s": entities / secs,
               "before_kib": before, "after_kib": after, "growth_mib": grow,
               "mib_per_100k": grow / entities * 100_000,
               "anon_mib_per_100k": (after["RssAnon"] - before["RssAnon"]) / 1024 / entities * 100_000,
               "disk_growth_mib": (disk_after - disk_before) / 2**20,
               "at_last_snapshot_kib": at_snapshots, "join_after_last_snapshot_s": join and join["after_last_snapshot_s"],
               "samples": [(n, kib / 1024) for n, kib in samples]}
        log(f"    after {entities:,} entities in {secs:.0f} s ({entities / secs:,.0f} ev/s): VmRSS "
            f"{after['VmRSS'] / 1024:,.1f} MiB (+{grow:,.1f}), peak {after['VmHWM'] / 1024:,.1f} MiB, "
            f"{res['mib_per_100k']:.1f} MiB per 100k entities; RocksDB dir +{res['disk_growth_mib']:.1f} MiB "
        f"(measured after the label join caught up, {res['join_after_last_snapshot_s'] or float('nan'):.0f} s after "
        f"the last snapshot)")
        return res


# ---------------------------------------------------------------- stats and profile aggregation

def pct(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": float("nan"), "p99": float("nan"), "max": float("nan"), "n": 0}
    s = sorted(values)

    def at(p: float) -> float:
        return s[min(len(s) - 1, max(0, int(round(p / 100 * len(s) + 0.5)) - 1))]

    return {"p50": at(50), "p90": at(90), "p99": at(99), "max": s[-1], "n": len(s)}


PROFILE_BUCKETS = [  # (label, substring of a frame) matched from the innermost frame outwards
    ("waiting in select() (idle)", "selectors.py:"),
    ("feature engine (shared/features.py)", "shared/features.py"),
    ("json / time parsing (shared/serialization.py)", "shared/serialization.py"),
    ("domain glue (services/features/domain.py)", "services/features/domain.py"),
    ("offline writer", "services/features/offline.py"),
    ("prometheus metrics", "prometheus_client/"),
    ("RocksDB store (faust/stores/rocksdb.py)", "faust/stores/rocksdb.py"),
    ("faust tables/changelog", "faust/tables/"),
    ("faust topics/sends", "faust/topics.py"),
    ("faust producer/transport", "faust/transport/"),
    ("faust streams/events", "faust/streams.py"),
    ("faust (other)", "faust/"),
    ("mode (faust's service framework)", "mode/"),
    ("aiokafka producer", "aiokafka/producer/"),
    ("aiokafka consumer/fetcher", "aiokafka/consumer/"),
    ("aiokafka protocol/conn/record", "aiokafka/"),
    ("asyncio event loop", "asyncio/"),
]

KEY_FUNCTIONS = [
    ("compute_features agent", "compute_features (services/features/app.py"),
    ("join_labels agent", "join_labels (services/features/app.py"),
    ("process_event", "process_event (services/features/domain.py"),
    ("FeatureEngine.apply", "apply (shared/features.py"),
    ("FeatureEngine._compute", "_compute (shared/features.py"),
    ("EntityState.from_bytes (load)", "from_bytes (shared/features.py"),
    ("EntityState.to_bytes (dump)", "to_bytes (shared/features.py"),
    ("table get/set (faust)", "faust/tables/"),
    ("topic send (faust)", "send (faust/topics.py"),
    ("consumer fetch/getmany (aiokafka)", "aiokafka/consumer/"),
    ("producer sender (aiokafka)", "aiokafka/producer/"),
]


def aggregate_py_spy(raw: str, seconds: float, rate: int = 100) -> dict[str, Any]:
    """Aggregate py-spy `-f raw` output ('frame;frame;... count', outermost first; idle threads are not
    sampled) into time by component (innermost frame that belongs to one), inclusive time of key
    functions, and self time by leaf function."""
    total = 0
    leaf: Counter = Counter()
    bucket: Counter = Counter()
    inclusive: Counter = Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        leaf[_short(frames[-1])] += n
        for f in reversed(frames):
            hit = next((label for label, sub in PROFILE_BUCKETS if sub in f), None)
            if hit:
                bucket[hit] += n
                break
        else:
            bucket["other"] += n
        for label, sub in KEY_FUNCTIONS:
            if any(sub in f for f in frames):
                inclusive[label] += n
    return {"samples": total, "possible": int(seconds * rate), "leaf": leaf.most_common(25),
            "bucket": bucket.most_common(), "inclusive": [(k, inclusive[k]) for k, _ in KEY_FUNCTIONS]}


def _short(frame: str) -> str:
    # "func (path/to/site-packages/pkg/file.py:123)" -> "func (pkg/file.py:123)"
    if "site-packages/" in frame:
        head, _, rest = frame.partition("(")
        return f"{head}({rest.split('site-packages/', 1)[1]}"
    return frame.replace(str(ROOT) + "/", "")


# ---------------------------------------------------------------- report

def report(bench: Bench, data: Data, compute: dict, args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"compute_only": compute}
    log("\n== 1+2. Throughput (events/s = snapshots from the first to the N-th on the output topic / seconds)")
    rows = []
    by_round = {d.round: {} for d in bench.drains}
    for d in bench.drains:
        by_round[d.round][d.name] = d
    for d in bench.drains:
        svc = d.cpu_s.get("service")
        bare = by_round[d.round].get("bare loop")
        join = d.extra.get("join")
        rows.append([d.round, d.name, f"{d.events:,}", f"{d.seconds:.2f}", f"{d.rate:,.0f}",
                     f"{join['events_per_s']:,.0f}" if join else "",
                     f"{d.rate / bare.rate:.2f}x" if bare and d.name == "worker" else "",
                     f"{svc / d.events * 1e6:,.0f}" if svc is not None else "-",
                     f"{(d.cpu_s.get('broker') or 0) / d.events * 1e6:,.0f}",
                     f"{(d.cpu_s.get('other') or 0) / d.seconds:.2f}", f"{d.startup_s:.1f}"])
    rows.append(["-", "compute only, in-process (no Kafka)", f"{compute['events']:,}", f"{compute['seconds']:.2f}",
                 f"{compute['events_per_s']:,.0f}", "", "", f"{compute['seconds'] / compute['events'] * 1e6:,.0f}",
                 "-", "-", "-"])
    log(table(["round", "run", "snapshots", "seconds", "events/s", "incl. join ev/s", "worker/bare", "proc µs/ev", "broker µs/ev",
               "other cores", "startup s"], rows))
    workers = [d.rate for d in bench.drains if d.name == "worker"]
    bares = [d.rate for d in bench.drains if d.name == "bare loop"]
    ratios = [by_round[r]["worker"].rate / by_round[r]["bare loop"].rate for r in by_round
              if "worker" in by_round[r] and "bare loop" in by_round[r]]
    if workers and bares:
        w, b = median(workers), median(bares)
        ratio = median(ratios)
        log(f"\nworker  median {w:,.0f} ev/s (spread {spread(workers)} over {len(workers)} runs)")
        log(f"bare    median {b:,.0f} ev/s (spread {spread(bares)} over {len(bares)} runs)")
        log(f"ratio worker/bare per round: {', '.join(f'{x:.2f}x' for x in ratios)}; median {ratio:.2f}x")
        cpu_ratio = []
        for r in by_round.values():
            if "worker" in r and "bare loop" in r and r["worker"].cpu_s.get("service") and r["bare loop"].cpu_s.get("service"):
                cpu_ratio.append((r["bare loop"].cpu_s["service"] / r["bare loop"].events)
                                 / (r["worker"].cpu_s["service"] / r["worker"].events))
        if cpu_ratio:
            log(f"CPU per snapshot, bare/worker (less sensitive to other load than events/s): "
                f"{', '.join(f'{x:.2f}x' for x in cpu_ratio)}")
        g1, g2 = w >= GOAL_EVENTS_PER_S, ratio >= GOAL_RATIO
        log(f"goal >= {GOAL_EVENTS_PER_S:,.0f} events/s per worker: {w:,.0f} -> {'PASS' if g1 else 'MISS'}")
        log(f"goal >= {GOAL_RATIO}x the bare loop:          {ratio:.2f}x -> {'PASS' if g2 else 'MISS'}")
        joined = [d.extra["join"]["events_per_s"] for d in bench.drains if d.name == "worker" and d.extra.get("join")]
        if joined:
            log(f"worker incl. its label join (until every snapshot is in the label-join table): median "
                f"{median(joined):,.0f} ev/s (spread {spread(joined)})")
        result["throughput"] = {"worker_median": w, "worker_incl_join": joined, "cpu_ratio": cpu_ratio, "bare_median": b, "ratio_median": ratio, "ratios": ratios,
                                "worker_runs": workers, "bare_runs": bares,
                                "goals": {"events_per_s": {"goal": GOAL_EVENTS_PER_S, "pass": g1},
                                          "ratio": {"goal": GOAL_RATIO, "pass": g2}}}
    off = [d.rate for d in bench.drains if d.name == "worker+offline"]
    if off:
        log(f"worker with the offline writer on: {off[0]:,.0f} ev/s "
            f"({off[0] / median(workers):.2f}x the worker without it)" if workers else "")
        result.setdefault("throughput", {})["worker_offline"] = off[0]
    log(BARE_EXPLAIN)
    log("proc µs/ev: CPU time (user+sys) of the worker / bare-loop process per snapshot, first -> N-th snapshot; "
        "broker µs/ev likewise; other cores: CPU used meanwhile by everything else on the machine (other people's "
        "tests): above ~0.2 the figures are disturbed.")
    result["drains"] = [{**d.__dict__, "rate": d.rate} for d in bench.drains]
    log(f"(data: {len(data.items):,} events of {data.users} users from examples/fraud/generate.py, seed 42; "
        f"entity state after the run: mean {compute['state_bytes_mean']:,.0f} B, max {compute['state_bytes_max']:,} B; "
        f"expected snapshots {compute['snapshots']:,}, statuses {compute['statuses']})")

    if bench.profile:
        p = bench.profile
        result["profile"] = p
        if "error" in p:
            log(f"\npy-spy failed: {p['error']}")
        else:
            tot = max(1, p["samples"])
            log(f"\n== Where the worker's time goes (py-spy {args.profile:.0f} s at 100 Hz during a separate "
                f"profiled drain, not counted above: {tot:,} busy samples of {p['possible']:,} possible = "
                f"{tot / max(1, p['possible']):.0%} of one core; shares are of busy samples. py-spy samples wall "
                f"time of a non-idle thread: a thread preempted inside a syscall (e.g. a socket write that wakes "
                f"the broker on a saturated machine) counts as busy there)")
            log(table(["component (innermost frame)", "share"],
                      [[k, f"{v / tot:.1%}"] for k, v in p["bucket"]]))
            log("")
            log(table(["inclusive (anywhere on the stack)", "share"],
                      [[k, f"{v / tot:.1%}"] for k, v in p["inclusive"]]))
            log("")
            log(table(["self time, top functions", "share"], [[k, f"{v / tot:.1%}"] for k, v in p["leaf"][:15]]))
    return result


def report_freshness(runs: list[dict]) -> None:
    log("\n== 3. Freshness: ingest acknowledgement -> snapshot received")
    rows = []
    for r in runs:
        e, a, t = r["event_record_ms"], r["recv_ms"], r["timestamp_ms"]
        rows.append([r.get("round", "-"), r["run"], f"{r['rate_target']:,.0f}", f"{r['rate_achieved']:,.0f}", f"{r['measured']:,}", r["missing"],
                     f"{e['p50']:.1f}", f"{e['p99']:.1f}", f"{e['max']:.1f}",
                     f"{a['p50']:.1f}", f"{a['p99']:.1f}", f"{t['p50']:.1f}", f"{t['p99']:.1f}",
                     "yes" if r["sustained"] else "NO",
                     ("PASS" if r["sustained"] and e["p99"] <= GOAL_P99_MS else "MISS") if r["run"] == "worker" else "-"])
    log(table(["round", "run", "target ev/s", "sent ev/s", "measured", "missing", "p50 ms", "p99 ms", "max ms",
               "client p50", "client p99", "ts p50 ms", "ts p99 ms", "sustained", f"p99<={GOAL_P99_MS:.0f}ms"], rows))
    log("p50/p99/max: from the event record's Kafka timestamp (CreateTime: ingest's producer stamps it when it queues "
        "the record, before the broker's ack, after which ingest answers 202) to time.time() when a separate reader "
        "process (assigned to every partition of `features` and `events`, positioned at their ends before sending) "
        "received the snapshot: an upper bound of ack -> snapshot that does not depend on the load generator. "
        "client: from time.time() when the load generator had read the 202 (late when its process is busy: "
        "negative latencies, snapshot seen before the client processed the 202, are kept: "
        + ", ".join(str(r["negative_recv"]) for r in runs) + "). ts: client 202 -> the snapshot's Kafka "
        "timestamp (CreateTime, set by the worker's producer when the send is queued, before the broker ack).")
    for r in runs:
        cpu = r["cpu_s"]
        busy = {k: (v or 0) / r["cpu_wall_s"] for k, v in cpu.items()}
        log(f"  round {r.get('round', '-')} {r['run']} at {r['rate_target']:,.0f}/s (sending {r['seconds']:.1f} s, all 202s after {r['all_acked_s']:.1f} s, "
            f"then waiting for the last snapshots) cores busy: " + ", ".join(f"{k} {v:.2f}" for k, v in busy.items())
            + (f"; worker's own mean ingested_at->send {r['worker_metric_latency_mean_ms']:.1f} ms" if r["run"] == "worker" else "")
            + f"; request send lateness p99 {r['send_late_p99_ms']:.1f} ms")
        if not r["sustained"]:
            log(f"  at {r['rate_target']:,.0f}/s the stack did NOT keep up: median latency grew from "
                f"{r['first_quarter_p50_ms']:.0f} ms (first quarter) to {r['last_quarter_p50_ms']:.0f} ms (last quarter)"
                f"{'; failures ' + str(r['failures']) if r['failures'] else ''}")


def report_memory(m: dict) -> None:
    log("\n== 4. Memory of the worker process (VmRSS from /proc/<pid>/status)")
    b, a, z = m["before_kib"], m["after_kib"], m["at_last_snapshot_kib"]
    log(table(["", "VmRSS MiB", "RssAnon MiB", "RssFile MiB", "VmHWM MiB"],
              [["before", f"{b['VmRSS'] / 1024:,.1f}", f"{b['RssAnon'] / 1024:,.1f}", f"{b['RssFile'] / 1024:,.1f}",
                f"{b['VmHWM'] / 1024:,.1f}"],
               ["at the last snapshot (join behind)", f"{z['VmRSS'] / 1024:,.1f}", f"{z['RssAnon'] / 1024:,.1f}",
                f"{z['RssFile'] / 1024:,.1f}", f"{z['VmHWM'] / 1024:,.1f}"],
               [f"after {m['entities']:,} entities + join", f"{a['VmRSS'] / 1024:,.1f}", f"{a['RssAnon'] / 1024:,.1f}",
                f"{a['RssFile'] / 1024:,.1f}", f"{a['VmHWM'] / 1024:,.1f}"]]))
    log(f"growth {m['growth_mib']:,.1f} MiB = {m['mib_per_100k']:.1f} MiB per 100k entities (anonymous memory "
        f"{m['anon_mib_per_100k']:.1f} MiB per 100k); RocksDB data dir +{m['disk_growth_mib']:.1f} MiB; "
        f"processed at {m['events_per_s']:,.0f} ev/s (producer running alongside)")
    log("VmRSS along the way (snapshots seen -> MiB): "
        + ", ".join(f"{n:,}->{mib:,.0f}" for n, mib in m["samples"]))
    half = [(n, mib) for n, mib in m["samples"] if n >= m["entities"] // 2]
    if len(half) >= 2 and half[-1][0] > half[0][0]:
        (n0, r0), (n1, r1) = half[0], half[-1]
        log(f"second half ({n0:,} -> {n1:,} entities): {(r1 - r0) / (n1 - n0) * 100_000:.1f} MiB per 100k entities")
    log("Each event is of a new entity, so this counts one entity-state entry and one label-join entry "
        "(the whole snapshot, kept for the label's max_delay, and its expiry-index key) per event. Both tables "
        "are faust RocksDB stores (one DB per partition and table) with the write-buffer and block-cache sizes "
        "set in services/features/app.py.")


# ---------------------------------------------------------------- main

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=30_000, help="events per throughput run (default %(default)s)")
    ap.add_argument("--rounds", type=int, default=2, help="worker + bare rounds (default %(default)s)")
    ap.add_argument("--entities", type=int, default=200_000,
                    help="distinct entities for the memory test (default %(default)s; e.g. 1000000)")
    ap.add_argument("--rate", type=float, default=1000.0, help="freshness load, events/s (default %(default)s)")
    ap.add_argument("--no-bare-freshness", action="store_true",
                    help="skip the bare loop's freshness run (the same load through the bare aiokafka loop)")
    ap.add_argument("--fallback-rates", type=lambda v: [float(x) for x in v.split(",") if x], default=[300.0, 100.0],
                    help="lower freshness rates tried in turn while a rate is not sustained (default 300,100)")
    ap.add_argument("--duration", type=float, default=20.0, help="freshness seconds measured (default %(default)s)")
    ap.add_argument("--freshness-rounds", type=int, default=2,
                    help="freshness rounds, each a worker run and a bare-loop run, order alternating "
                         "(default %(default)s)")
    ap.add_argument("--freshness-warmup", type=float, default=40.0, metavar="SECONDS",
                    help="unreported run of the same load through the worker first, warming the broker "
                         "(default %(default)s)")
    ap.add_argument("--batch", type=int, default=10, help="events per freshness POST (default %(default)s)")
    ap.add_argument("--freshness-offline", action="store_true", help="run the worker's offline writer during freshness")
    ap.add_argument("--no-offline-round", dest="offline_round", action="store_false",
                    help="skip the throughput run with the offline writer on")
    ap.add_argument("--profile", type=float, default=0.0, metavar="SECONDS",
                    help="one extra worker run profiled with py-spy for SECONDS (needs ptrace; not counted)")
    ap.add_argument("--profile-out", type=Path, default=None, help="also keep py-spy's raw stacks in this file")
    ap.add_argument("--no-join-wait", dest="join_wait", action="store_false",
                    help="do not wait for the worker's label join to catch up after each throughput run")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-freshness", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--json", action="store_true", help="also print the results as one JSON object (last line)")
    args = ap.parse_args(argv)
    if min(args.events, args.entities, args.batch, args.freshness_rounds) < 1 or args.rounds < 0 \
            or args.rate <= 0:
        ap.error("counts and rates must be >= 1")
    return args


async def run(bench: Bench, data: Data, expected: int) -> tuple[list[dict], dict | None]:
    a = bench.args
    if not a.skip_throughput:
        log(f"\n-- throughput: {a.rounds} round(s) of worker then bare loop, {len(data.items):,} events each")
        await bench.throughput(data, expected)
    fresh: list[dict] = []
    if not a.skip_freshness:
        log(f"\n-- freshness: {a.batch} events per POST, {a.duration:.0f} s at {a.rate:,.0f}/s, {a.freshness_rounds} round(s)")
        if a.freshness_warmup > 0:
            # The broker's JIT: whichever run came first on a fresh broker paid for it (measured: the
            # bare loop's p50 33 ms first vs 9 ms after the worker's run; broker 1.0 vs 0.4 cores).
            # Through the worker: its requests are a superset of the bare loop's (more topics).
            log(f"  broker warm-up: {a.freshness_warmup:.0f} s of the same load through the worker, not reported")
            await bench.freshness(a.rate, a.freshness_warmup, warm_s=0.0)
        for round_no in range(1, a.freshness_rounds + 1):
            # the order alternates, so neither run always goes first
            order = [False, True] if round_no % 2 else [True, False]
            for bare in order:
                if bare and a.no_bare_freshness:
                    continue
                fresh.append(await bench.freshness(a.rate, a.duration, bare=bare) | {"round": round_no})
        worker_runs = [r for r in fresh if r["run"] == "worker"]
        for lower in a.fallback_rates:
            if any(r["sustained"] for r in worker_runs) or lower >= worker_runs[-1]["rate_target"]:
                break
            log(f"    not sustained at {worker_runs[-1]['rate_target']:,.0f}/s; measuring at {lower:,.0f}/s as well")
            worker_runs.append(await bench.freshness(lower, a.duration) | {"round": "-"})
            fresh.append(worker_runs[-1])
    mem = None
    if not a.skip_memory:
        log("\n-- memory")
        mem = await bench.memory(data, a.entities)
    return fresh, mem


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    kafka = require_kafka("bench/features.py")
    sigterm_as_exit()
    fast_httpx_without_sniffio()
    logging.getLogger("aiokafka").setLevel(logging.ERROR)  # retried NotLeaderForPartition right after topic creation
    started = time.perf_counter()
    log(f"features bench: {machine()}, load average {os.getloadavg()[0]:.2f}, broker {kafka.bootstrap_servers}")
    log(SHARED_CORES)
    data = Data(args.events)
    compute = data.compute_only()
    expected = compute["snapshots"]
    log(f"{len(data.items):,} fraud events of {data.users} users prepared; in-process compute alone "
        f"(orjson + load/apply/dump + snapshot dumps): {compute['events_per_s']:,.0f} ev/s; "
        f"{expected:,} snapshots expected")
    bench = Bench(args, kafka)
    fresh, mem = asyncio.run(run(bench, data, expected))  # on failure, logs stay in bench.tmp
    result = report(bench, data, compute, args)
    if fresh:
        report_freshness(fresh)
        result["freshness"] = fresh
    if mem:
        report_memory(mem)
        result["memory"] = mem
    if bench.keep_tmp:
        log(f"logs kept in {bench.tmp}")
    else:
        shutil.rmtree(bench.tmp, ignore_errors=True)
    log(f"\n{SHARED_CORES}\nTotal {time.perf_counter() - started:.0f} s.")
    if args.json:
        result["config"] = vars(args)
        print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
