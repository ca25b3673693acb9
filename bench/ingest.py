"""Ingest throughput: events/s acknowledged through HTTP (single events, batches of 500) and the
direct-Kafka path (events.raw -> bridge -> events), side by side with a bare aiokafka producer
sending the same Event envelope bytes with the same producer settings (the peer of the HTTP paths)
and a bare aiokafka relay consuming raw records, parsing them and producing them on, committing after
the acks (the peer of the direct path).

    deploy/with-kafka.sh .venv/bin/python -m bench.ingest [--events N] [--rounds R] [--json]
    make bench        (deploy/run-bench.sh: every benchmark against a throwaway broker)

The ingest service runs as a real separate process (`python -m services.ingest`); the load
generator runs in this process; both (and the broker) share this machine's cores.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import sys
import time
from collections import Counter

import httpx
import orjson
from aiokafka.partitioner import DefaultPartitioner

from bench.common import (
    ROOT, CpuMeter, OffsetWatcher, broker_pid, chunks, event_loop_runner, fast_httpx_without_sniffio,
    fraud_events, machine, median, require_kafka, sigterm_as_exit, spread, table, unique_prefix,
)
from deploy.free_ports import free_port
from deploy.procs import ServiceProcess
from shared.events import EventValidator
from shared.kafka import OutRecord, ensure_topics, make_producer, run_consumer, send_batched
from shared.serialization import dumps, utcnow
from shared.settings import KafkaSettings
from shared.spec import load_spec
from shared.topics import Topics

SPEC = ROOT / "examples" / "fraud" / "pipeline.yaml"
JSON_HEADERS = {"content-type": "application/json"}
# path: (its peer, minimum ratio of events/s to the peer's in the same run)
GOALS = {"http_batch": ("bare", 0.5), "direct": ("relay", 0.8)}
INFO_GOALS = {"direct_backlog": ("relay", 0.8)}  # the direct goal for the bridge alone: shown, not judged

PATHS = {
    "bare": "(d) bare aiokafka producer",
    "bare_batch": "(d') bare producer, batch API",
    "http_single": "(a) HTTP single events",
    "http_batch": "(b) HTTP batches",
    "direct": "(c) direct Kafka, live",
    "direct_backlog": "(c') direct Kafka, backlog",
    "relay": "(e) bare aiokafka relay, live",
}

EXPLAIN = """\
How each figure is measured (events/s = acknowledged events / seconds):
 (d) bare: shared.kafka.make_producer (acks=all, idempotent, linger 2 ms, 256 KiB batches) in this
     process sends the exact Event envelope bytes ingest would produce (validated+enveloped+serialized
     before timing) to a 6-partition topic like `events`; first send -> last ack. Nothing else runs.
 (d') the same records through the producer's batch API (partition by the default murmur2
     partitioner, create_batch/append/send_batch per partition): what the client library can do
     when not called once per record. Informational.
 (a) HTTP single: CLIENT, keep-alive connections, C concurrent POST /v1/events with one JSON object
     each; first request -> last 202 response (a 202 means Kafka acked, acks=all).
 (b) HTTP batch: the same with JSON arrays of B events.
 (c) direct live: with the service ready and idle, a separate producer here (same settings) writes N
     raw events to events.raw as fast as it can while the bridge consumes; from the first raw send to
     the moment the last validated event is in `events` (end offsets polled every 20 ms). This is the
     end-to-end figure used for the goal; the raw producer shares the CPU like the HTTP clients do.
     It does strictly more work on the same cores than (d): (d)'s producing, plus consuming,
     validating and producing again, and about twice the broker work, so its ceiling is below 1x.
 (c') direct backlog: service stopped, N raw events written, service restarted; the drain rate from
     the first to the last validated event seen in `events` (excludes startup and the first batch):
     bridge throughput with no producer competing for the CPU. Informational (the 0.8x is shown, not judged).
 (e) relay live: the direct path's peer, measured like (c): a bare aiokafka relay in its own process
     (uvloop, like the service) consumes its own copy of events.raw (3 partitions; shared.kafka.make_consumer:
     manual commit, read_committed, 1000 records per poll), parses each value (orjson), produces it again
     keyed by user_id to its own 6-partition `events` through the batch API (shared.kafka.make_producer:
     acks=all, idempotent), waits for the acks, then commits. No validation, no envelope: the least any
     relay does. The direct goal is (c) >= 0.8x (e).
The service process, this load generator and the broker share the machine's cores, as a
single-machine deployment would; the CPU table shows who used how much CPU per event."""


# ---------------------------------------------------------------- payloads

class Payloads:
    def __init__(self, events: list[dict], batch_size: int, n_single: int):
        validator = EventValidator(load_spec(SPEC))
        now = utcnow()
        self.single = [orjson.dumps(e) for e in events[:n_single]]
        self.batches = [orjson.dumps(list(c)) for c in chunks(events, batch_size)]
        self.raw = [(e["user_id"].encode(), orjson.dumps(e)) for e in events]
        self.envelopes = []  # exactly what services.ingest.domain.check_events produces for each event
        for e in events:
            record = validator.envelope(validator.validate(e), source="http", ingested_at=now)
            self.envelopes.append((validator.kafka_key(record), dumps(record)))


# ---------------------------------------------------------------- the paths

async def produce_all(producer, topic: str, records: list[tuple[bytes, bytes]]) -> float:
    """Send every record, wait for every ack; seconds from the first send to the last ack."""
    send = producer.send
    t0 = time.perf_counter()
    futures = [await send(topic, value=value, key=key) for key, value in records]
    await asyncio.gather(*futures)
    return time.perf_counter() - t0


async def produce_batched(producer, topic: str, records: list[tuple[bytes, bytes]]) -> float:
    """The same through create_batch/send_batch, partitioned like send() would; first append -> last ack."""
    partitioner = DefaultPartitioner()
    parts = sorted(await producer.partitions_for(topic))
    t0 = time.perf_counter()
    by_partition: dict[int, list[tuple[bytes, bytes]]] = {}
    for key, value in records:
        by_partition.setdefault(partitioner(key, parts, parts), []).append((key, value))
    futures = []
    for partition, recs in by_partition.items():
        batch = producer.create_batch()
        for key, value in recs:
            if batch.append(key=key, value=value, timestamp=None) is None:  # full: send it, start another
                futures.append(await producer.send_batch(batch, topic, partition=partition))
                batch = producer.create_batch()
                batch.append(key=key, value=value, timestamp=None)
        futures.append(await producer.send_batch(batch, topic, partition=partition))
    await asyncio.gather(*futures)
    return time.perf_counter() - t0


class HttpLoad:
    """Keep-alive HTTP client for the load: aiohttp (default: light) or httpx.AsyncClient.

    httpx costs this machine several times more client CPU per request than aiohttp (encode/httpx#3215),
    CPU the load generator takes from the service on the shared cores; --client httpx measures with it."""

    def __init__(self, kind: str, url: str, connections: int):
        self.kind, self.url, self.connections = kind, url, connections

    async def __aenter__(self) -> HttpLoad:
        if self.kind == "aiohttp":
            import aiohttp
            self._session = aiohttp.ClientSession(
                self.url, connector=aiohttp.TCPConnector(limit=self.connections, keepalive_timeout=2.0),
                timeout=aiohttp.ClientTimeout(total=120))
        else:
            limits = httpx.Limits(max_connections=self.connections, max_keepalive_connections=self.connections,
                                  keepalive_expiry=2.0)
            self._client = httpx.AsyncClient(base_url=self.url, limits=limits, timeout=120)
        return self

    async def __aexit__(self, *exc) -> None:
        if self.kind == "aiohttp":
            await self._session.close()
        else:
            await self._client.aclose()

    async def post(self, body: bytes) -> tuple[int, bytes]:
        if self.kind == "aiohttp":
            async with self._session.post("/v1/events", data=body, headers=JSON_HEADERS) as r:
                return r.status, await r.read()
        r = await self._client.post("/v1/events", content=body, headers=JSON_HEADERS)
        return r.status_code, r.content


async def http_post_all(client: HttpLoad, bodies: list[bytes], concurrency: int,
                        single: bool = False) -> tuple[float, int]:
    """POST every body with `concurrency` requests in flight; (seconds, events acknowledged)."""
    it = iter(bodies)
    accepted = 0
    failures: Counter = Counter()

    async def worker() -> None:
        nonlocal accepted
        for body in it:  # shared iterator: next() never awaits, so each body goes out once
            status, content = await client.post(body)
            if status == 202:
                accepted += 1 if single else orjson.loads(content)["accepted"]
            else:
                failures[f"{status} {content[:200]!r}"] += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.perf_counter() - t0
    if failures:
        raise RuntimeError(f"ingest did not acknowledge every request: {dict(failures)}")
    return seconds, accepted


# ---------------------------------------------------------------- the bare relay (child process)

def relay_main(bootstrap: str, raw_topic: str, out_topic: str, group: str) -> None:
    """Child-process entry: the direct path's peer, until terminated."""
    os.environ["KAFKA_BOOTSTRAP_SERVERS"] = bootstrap
    event_loop_runner()(_relay(KafkaSettings(), raw_topic, out_topic, group))


async def _relay(kafka: KafkaSettings, raw_topic: str, out_topic: str, group: str) -> None:
    producer = make_producer(kafka)  # the settings ingest's producer uses
    await producer.start()
    loads, dumps_ = orjson.loads, orjson.dumps

    async def handle(records: list) -> None:
        out = []
        for msg in records:
            event = loads(msg.value)
            out.append(OutRecord(out_topic, event["user_id"].encode(), dumps_(event)))
        await asyncio.gather(*await send_batched(producer, out))  # every ack before run_consumer commits

    try:  # the raw bridge's loop (shared.kafka.run_consumer): fetch, handle, commit after the acks
        await run_consumer(kafka, [raw_topic], group, handle, stop=asyncio.Event(), name="relay")
    finally:
        await producer.stop()


# ---------------------------------------------------------------- the run

class Bench:
    def __init__(self, args: argparse.Namespace, kafka: KafkaSettings, svc: ServiceProcess, prefix: str):
        self.args, self.kafka, self.svc = args, kafka, svc
        self.topics = Topics(prefix)
        self.bare_topic = Topics(prefix + "bare.")["events"]
        self.relay_topics = Topics(prefix + "relay.")
        self.group = self.topics.group("ingest", "raw")
        self.rows: list[dict] = []
        self.expected_events = 0  # validated events ingest should have written to `events`
        self.expected_relayed = 0  # events the relay should have written to its `events`
        self.integrity: dict = {}
        self.relay: mp.Process | None = None

    def meter(self, relay: bool = False) -> CpuMeter:
        """CPU of the service (for the relay's phase: the relay process), this process and the broker."""
        proc = self.relay if relay else self.svc.proc
        pid = proc.pid if proc is not None else None
        return CpuMeter({"service": pid, "broker": broker_pid()}).start()

    def record(self, round_no: int, path: str, events: int, seconds: float, cpu: dict, **extra) -> None:
        row = {"round": round_no, "path": path, "events": events, "seconds": seconds,
               "events_per_s": events / seconds, "cpu_s": cpu, **extra}
        self.rows.append(row)
        print(f"  round {round_no} {PATHS[path]:<28} {events:>8,} events {seconds:7.2f} s "
              f"{events / seconds:>9,.0f} ev/s", flush=True)

    async def run(self, p: Payloads) -> None:
        a = self.args
        await ensure_topics(self.kafka, self.topics)
        await ensure_topics(self.kafka, Topics(self.bare_topic.removesuffix("events")), names=[self.bare_topic])
        rt = self.relay_topics
        await ensure_topics(self.kafka, rt, names=[rt["events.raw"], rt["events"]])
        await asyncio.to_thread(self.svc.start)
        self.relay = mp.get_context("spawn").Process(
            target=relay_main, args=(self.kafka.bootstrap_servers, rt["events.raw"], rt["events"],
                                     rt.group("relay", "raw")), daemon=True)
        self.relay.start()
        bare = make_producer(self.kafka)
        raw = make_producer(self.kafka)
        await bare.start()
        await raw.start()
        try:
            async with OffsetWatcher(self.kafka) as watch:
                await self.warm_up(p, bare, raw, watch)
                for r in range(1, a.rounds + 1):
                    await self.round(r, p, bare, raw, watch)
                await self.verify(watch)
        finally:
            await bare.stop()
            await raw.stop()
            self.relay.terminate()
            self.relay.join(10)

    async def post_all(self, bodies: list[bytes], concurrency: int, single: bool = False) -> tuple[float, int]:
        """A fresh keep-alive client per phase: no connection left idle long enough for the server
        to close it under a request (uvicorn drops idle keep-alive connections after 5 s)."""
        async with HttpLoad(self.args.client, self.svc.url, concurrency) as client:
            return await http_post_all(client, bodies, concurrency, single)

    async def warm_up(self, p, bare, raw, watch) -> None:
        """Connections, producer ids, metadata, pydantic/orjson code paths, the bridge's group join, and
        the broker's JIT (a fresh JVM spends seconds compiling): every path, repeated for --warmup-s."""
        t0 = time.perf_counter()
        n_warm = min(10_000, len(p.raw))
        cycles = 0
        while cycles == 0 or time.perf_counter() - t0 < self.args.warmup_s:
            cycles += 1
            await produce_all(bare, self.bare_topic, p.envelopes[:n_warm])
            await produce_batched(bare, self.bare_topic, p.envelopes[:n_warm])
            _, n = await self.post_all(p.single[:500], self.args.concurrency, single=True)
            self.expected_events += n
            _, n = await self.post_all(p.batches[:n_warm // self.args.batch], self.args.batch_concurrency)
            self.expected_events += n
            base = await watch.end(self.topics["events"])
            await produce_all(raw, self.topics["events.raw"], p.raw[:n_warm])
            self.expected_events += n_warm
            await watch.wait_end(self.topics["events"], base + n_warm, timeout_s=120)
            base = await watch.end(self.relay_topics["events"])
            await produce_all(raw, self.relay_topics["events.raw"], p.raw[:n_warm])
            self.expected_relayed += n_warm
            await watch.wait_end(self.relay_topics["events"], base + n_warm, timeout_s=120)
        print(f"warm-up: {cycles} cycle(s) of every path in {time.perf_counter() - t0:.1f} s", flush=True)

    async def round(self, r: int, p: Payloads, bare, raw, watch) -> None:
        a = self.args
        # (d) the bare producer: the reference for everything else
        m = self.meter()
        secs = await produce_all(bare, self.bare_topic, p.envelopes)
        self.record(r, "bare", len(p.envelopes), secs, m.stop())
        m = self.meter()
        secs = await produce_batched(bare, self.bare_topic, p.envelopes)
        self.record(r, "bare_batch", len(p.envelopes), secs, m.stop())

        # (a) one event per POST
        m = self.meter()
        secs, n = await self.post_all(p.single, a.concurrency, single=True)
        self.expected_events += n
        self.record(r, "http_single", n, secs, m.stop(), concurrency=a.concurrency)

        # (b) batches
        m = self.meter()
        secs, n = await self.post_all(p.batches, a.batch_concurrency)
        self.expected_events += n
        self.record(r, "http_batch", n, secs, m.stop(), concurrency=a.batch_concurrency, batch=a.batch)

        # (c) direct, live: raw producer and bridge at the same time
        events_topic = self.topics["events"]
        base = await watch.end(events_topic)
        m = self.meter()
        t0 = time.monotonic()
        raw_secs = await produce_all(raw, self.topics["events.raw"], p.raw)
        samples = await watch.wait_end(events_topic, base + len(p.raw), timeout_s=max(120, len(p.raw) / 500))
        cpu = m.stop()
        self.expected_events += len(p.raw)
        self.record(r, "direct", len(p.raw), samples[-1][0] - t0, cpu, raw_produce_s=raw_secs)

        # (e) the bare relay, live, measured the same way
        relay_out = self.relay_topics["events"]
        base = await watch.end(relay_out)
        m = self.meter(relay=True)
        t0 = time.monotonic()
        raw_secs = await produce_all(raw, self.relay_topics["events.raw"], p.raw)
        samples = await watch.wait_end(relay_out, base + len(p.raw), timeout_s=max(120, len(p.raw) / 500))
        cpu = m.stop()
        self.expected_relayed += len(p.raw)
        self.record(r, "relay", len(p.raw), samples[-1][0] - t0, cpu, raw_produce_s=raw_secs)

        if a.backlog:
            await self.backlog_round(r, p, raw, watch)

    async def backlog_round(self, r: int, p: Payloads, raw, watch) -> None:
        """(c') stop the service, queue N raw events, restart it, time the drain."""
        events_topic = self.topics["events"]
        await asyncio.to_thread(self.svc.stop)
        base = await watch.end(events_topic)
        await produce_all(raw, self.topics["events.raw"], p.raw)
        target = base + len(p.raw)
        spawned = time.monotonic()
        await asyncio.to_thread(self.svc.start, False)
        first: tuple[float, int] | None = None
        m: CpuMeter | None = None
        deadline = spawned + max(180, len(p.raw) / 500)
        while True:
            n = await watch.end(events_topic)
            now = time.monotonic()
            if first is None and n > base:
                first, m = (now, n), self.meter()
            if n >= target:
                break
            if now > deadline:
                raise TimeoutError(f"backlog: {n - base} of {len(p.raw)} events after {now - spawned:.0f} s")
            if self.svc.proc.poll() is not None:
                raise RuntimeError(f"ingest exited: {self.svc.tail()}")
            await asyncio.sleep(0.02)
        assert first is not None and m is not None
        self.expected_events += len(p.raw)
        self.record(r, "direct_backlog", n - first[1], now - first[0], m.stop(),
                    spawn_to_last_s=now - spawned, first_seen=first[1] - base)
        await asyncio.to_thread(self.svc.wait_ready)

    async def verify(self, watch) -> None:
        """Every acknowledged event is in `events` once per send, and nothing went to the DLQ."""
        n = await watch.end(self.topics["events"])
        dlq = await watch.end(self.topics["events.dlq"])
        relayed = await watch.end(self.relay_topics["events"])
        self.integrity = {"events_topic": n, "expected": self.expected_events, "dlq": dlq,
                          "relayed": relayed, "relay_expected": self.expected_relayed,
                          "ok": dlq == 0 and n == self.expected_events and relayed == self.expected_relayed}


# ---------------------------------------------------------------- report

def report(rows: list[dict], args: argparse.Namespace) -> dict:
    by_path: dict[str, list[dict]] = {}
    for row in rows:
        by_path.setdefault(row["path"], []).append(row)
    rate = {(row["path"], row["round"]): row["events_per_s"] for row in rows}
    bare_med = median([row["events_per_s"] for row in by_path["bare"]])
    medians = {path: median([row["events_per_s"] for row in rs]) for path, rs in by_path.items()}

    def vs_peer(row: dict) -> str:
        goal = GOALS.get(row["path"], INFO_GOALS.get(row["path"]))
        peer_rate = rate.get((goal[0], row["round"])) if goal else None
        return f"{row['events_per_s'] / peer_rate:.2f}x {goal[0]}" if goal and peer_rate else ""

    print("\nPer round (ratio = events/s / the bare producer's in the same round; "
          "vs peer = / the goal's peer's):")
    print(table(["round", "path", "events", "seconds", "events/s", "ratio", "vs peer"],
                [[row["round"], PATHS[row["path"]], f"{row['events']:,}", f"{row['seconds']:.2f}",
                  f"{row['events_per_s']:,.0f}", f"{row['events_per_s'] / rate[('bare', row['round'])]:.2f}x",
                  vs_peer(row)]
                 for row in rows]))

    summary, goals = [], {}
    print(f"\nSummary over {args.rounds} round(s): median events/s (min..max), ratios of the medians:")
    for path, label in PATHS.items():
        if path not in by_path:
            continue
        rates = [row["events_per_s"] for row in by_path[path]]
        goal = GOALS.get(path, INFO_GOALS.get(path))
        verdict, peer_ratio = "", None
        if goal is not None and goal[0] in medians:
            peer, minimum = goal
            peer_ratio = medians[path] / medians[peer]
            verdict = f"{peer_ratio:.2f}x {peer} >= {minimum}x  {'PASS' if peer_ratio >= minimum else 'MISS'}"
            if path in GOALS:
                goals[path] = {"peer": peer, "goal_ratio": minimum, "ratio": peer_ratio,
                               "pass": peer_ratio >= minimum}
            else:
                verdict += "  (info)"
        events = by_path[path][0]["events"]
        secs = median([row["seconds"] for row in by_path[path]])
        summary.append([label, f"{events:,}", f"{secs:.2f}", f"{median(rates):,.0f}", spread(rates),
                        f"{medians[path] / bare_med:.2f}x", verdict])
    print(table(["path", "events", "seconds", "events/s", "spread", "vs bare producer", "goal"], summary))

    print("\nCPU per event (µs of CPU time, summed over the phase; median over rounds); "
          f"{os.cpu_count()} cores = {os.cpu_count() * 1e6:,.0f} µs of CPU per second:")
    cpu_rows = []
    for path, label in PATHS.items():
        if path not in by_path:
            continue
        per = {}
        for who in ("service", "bench", "broker"):
            vals = [row["cpu_s"][who] / row["events"] * 1e6 for row in by_path[path] if row["cpu_s"].get(who) is not None]
            per[who] = f"{median(vals):.1f}" if vals else "-"
        ours = [sum(v for k, v in row["cpu_s"].items() if v and k != "other") / row["seconds"] for row in by_path[path]]
        other = [row["cpu_s"]["other"] / row["seconds"] for row in by_path[path] if row["cpu_s"].get("other") is not None]
        cpu_rows.append([label, per["service"], per["bench"], per["broker"], f"{median(ours):.2f}",
                         f"{median(other):.2f}" if other else "-"])
    print(table(["path", "service µs/ev", "bench µs/ev", "broker µs/ev", "cores busy", "other load"],
                cpu_rows))
    print("(service: the ingest process; for (e), the relay process)")
    print("(cores busy: ingest+bench+broker CPU / wall time; other load: cores used meanwhile by the rest of the "
          "machine, e.g. other people's tests: above ~0.1 the figures are disturbed)")
    other = [row["cpu_s"]["other"] / row["seconds"] for row in rows if row["cpu_s"].get("other") is not None]
    if other and median(other) > 0.25:
        print(f"WARNING: other processes used {median(other):.2f} cores (median over the phases) while this ran; "
              "events/s and ratios are disturbed, run again on a quiet machine. CPU µs per event is the steadier figure.")
    return {"bare_events_per_s_median": bare_med, "goals": goals, "rows": rows}


# ---------------------------------------------------------------- main

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=50_000,
                    help="events per round for the batch, direct and bare paths (default %(default)s)")
    ap.add_argument("--single-events", type=int, default=None,
                    help="events per round for HTTP single events (default: events/15)")
    ap.add_argument("--rounds", type=int, default=2, help="measurement rounds after the warm-up (default %(default)s)")
    ap.add_argument("--concurrency", type=int, default=16, help="in-flight single-event requests (default %(default)s)")
    ap.add_argument("--batch", type=int, default=500, help="events per batch request (default %(default)s)")
    ap.add_argument("--batch-concurrency", type=int, default=4, help="in-flight batch requests (default %(default)s)")
    ap.add_argument("--warmup-s", type=float, default=10.0,
                    help="repeat the warm-up over every path for at least this long (default %(default)s)")
    ap.add_argument("--no-backlog", dest="backlog", action="store_false",
                    help="skip the (c') backlog-drain measurement (saves a service restart per round)")
    ap.add_argument("--client", choices=("aiohttp", "httpx"), default=None,
                    help="HTTP client of the load generator (default: aiohttp if installed, else httpx)")
    ap.add_argument("--json", action="store_true", help="also print the results as one JSON object (last line)")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a goal is missed")
    args = ap.parse_args(argv)
    if args.client is None:
        try:
            import aiohttp  # noqa: F401
            args.client = "aiohttp"
        except ImportError:
            args.client = "httpx"
    if args.single_events is None:
        args.single_events = max(1000, args.events // 15)
    if min(args.events, args.single_events, args.rounds, args.concurrency, args.batch, args.batch_concurrency) < 1:
        ap.error("counts must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    kafka = require_kafka("bench.ingest")
    sigterm_as_exit()
    sniffio_shim = fast_httpx_without_sniffio()
    prefix = unique_prefix("ingest")
    n_all = max(args.events, args.single_events, 5000)
    t_prep = time.perf_counter()
    payloads = Payloads(fraud_events(n_all)[:n_all], args.batch, args.single_events)
    payloads.envelopes = payloads.envelopes[:args.events]
    payloads.raw = payloads.raw[:args.events]
    payloads.batches = payloads.batches[:-(-args.events // args.batch)]
    print(f"ingest bench: {machine()}, load average {os.getloadavg()[0]:.2f}, broker {kafka.bootstrap_servers}, "
          f"topic prefix {prefix!r}")
    print(f"{args.rounds} round(s) of {args.events:,} events ({args.single_events:,} for single-event HTTP); "
          f"payloads prepared in {time.perf_counter() - t_prep:.1f} s; HTTP client: {args.client}")
    print("The ingest service runs as a separate process (python -m services.ingest); the load generator "
          "runs in this process; they share the cores with the broker.\n", flush=True)

    port = free_port()
    svc = ServiceProcess("services.ingest", {
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers, "LOOPLINE_TOPIC_PREFIX": prefix,
        "LOOPLINE_SPEC_PATH": str(SPEC), "INGEST_PORT": str(port),
    }, port=port)
    bench = Bench(args, kafka, svc, prefix)
    started = time.perf_counter()
    try:
        event_loop_runner()(bench.run(payloads))
    except BaseException:
        if svc.proc is not None:
            print(f"\ningest log ({svc.log_path}), last lines:\n{svc.tail(20)}", file=sys.stderr)
        raise
    finally:
        svc.stop()
    print(f"\nmeasured in {time.perf_counter() - started:.0f} s; ingest log: {svc.log_path}")
    result = report(bench.rows, args)
    result["integrity"] = bench.integrity
    ok = bench.integrity.get("ok")
    print(f"\nintegrity: `events` holds {bench.integrity.get('events_topic'):,} records, expected "
          f"{bench.integrity.get('expected'):,} (every acknowledged event exactly once); DLQ "
          f"{bench.integrity.get('dlq')}; the relay's `events` {bench.integrity.get('relayed'):,} of "
          f"{bench.integrity.get('relay_expected'):,} -> {'OK' if ok else 'FAILED'}")
    if sniffio_shim and args.client == "httpx":
        print("note: sniffio is not installed; the load generator skips httpcore's per-request failed "
              "`import sniffio` (bench/common.py fast_httpx_without_sniffio), ~1 ms of client CPU per request.")
    print("\n" + EXPLAIN.replace(" C ", f" {args.concurrency} ").replace("CLIENT", args.client).replace(" B ", f" {args.batch} ")
          .replace(" N ", f" {args.events:,} "))
    if args.json:
        result["config"] = {k: v for k, v in vars(args).items()}
        print(json.dumps(result, default=str))
    missed = [p for p, g in result["goals"].items() if not g["pass"]]
    return 1 if (not ok or (args.strict and missed)) else 0


if __name__ == "__main__":
    sys.exit(main())
