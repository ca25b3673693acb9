"""Freshness of serving's feature state: from ingest's HTTP acknowledgement of an event to the moment
serving's replica of the entity's state includes it.

    deploy/with-kafka.sh .venv/bin/python -m bench.freshness [--events N] [--entities K] [--rate R]
                                                              [--burst N] [--json]

Ingest, the feature worker and serving run as separate processes (python -m services.<name>) against
the broker; the load generator and the poller run in this process; all share this machine's cores.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    OffsetWatcher, event_loop_runner, fast_httpx_without_sniffio, machine, require_kafka, sigterm_as_exit, table,
    unique_prefix,
)
from deploy.free_ports import free_port
from deploy.procs import ServiceProcess

SPEC = Path(__file__).resolve().parent.parent / "examples" / "fraud" / "pipeline.yaml"
CATEGORIES = ("grocery", "fuel", "restaurants", "travel", "electronics")
COUNTRIES = ("DE", "FR", "ES", "IT", "NL")

EXPLAIN = """\
How it is measured:
 * Events: K entities (users), event times 50 ms apart across the run (strictly increasing per entity,
   an hour in the past), each event its own POST /v1/events to ingest (single-event requests, so every
   event has its own acknowledgement). `ack` = this process's wall clock when ingest's 202 arrived.
 * One sender per entity (its events in order, one request at a time). steady: R events/s in all, each
   event due at a fixed time (the phase's start + i / rate; a late send goes at once); burst: no pacing, every sender
   as fast as ingest answers.
 * `serving has it`: one poller sends POST /v1/predict/batch with one probe event for every entity that
   has an acknowledged event serving has not shown yet, as fast as serving answers (plus POLL ms); the
   answer's staleness.state_event_time is the newest event time the entity's state in serving's replica
   holds, so every event of the entity at or before it is in serving's state. The time is the wall clock
   when that answer arrived: an upper bound, late by at most one poll round trip (its p50 is printed).
 * `worker snapshot`: the Kafka timestamp (CreateTime, ms) of the feature worker's snapshot of the event on
   `features`; the worker writes the state changelog serving follows only after that batch's snapshots
   are acknowledged, so ack -> snapshot is the worker's share and snapshot -> serving the changelog's
   and the replica's. ack -> snapshot can be negative: the worker may produce the snapshot before this
   process has read ingest's answer.
 * Before the measured phases a warm-up of WARMUP events goes through the same path, unmeasured.
 * Every probe is a real prediction (logged to `predictions`)."""


@dataclass
class Phase:
    name: str
    events: list[dict[str, Any]]
    ack: dict[str, float] = field(default_factory=dict)  # event_id -> wall time of ingest's 202
    seen: dict[str, float] = field(default_factory=dict)  # event_id -> wall time serving showed it
    snapshot: dict[str, float] = field(default_factory=dict)  # event_id -> the worker snapshot's timestamp
    sent_s: float = 0.0
    polls: int = 0
    poll_rtt: list[float] = field(default_factory=list)


def make_events(n: int, entities: int, first: int, t0_ms: int, seed: int, phase: str) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for i in range(first, first + n):
        t_ms = t0_ms + i * 50
        out.append({"_i": i - first,
            "event_id": f"fresh-{phase}-{i}", "user_id": f"fresh{i % entities}",
            "amount": round(rng.uniform(1, 500), 2), "merchant_category": rng.choice(CATEGORIES),
            "country": rng.choice(COUNTRIES), "channel": rng.choice(("pos", "web", "app")),
            "ts": datetime.fromtimestamp(t_ms / 1000, timezone.utc).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "_t_ms": t_ms,
        })
    return out


def body(event: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in event.items() if not k.startswith("_")}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q * len(ordered) + 0.5)) - 1))]


class Bench:
    def __init__(self, args: argparse.Namespace, ingest: ServiceProcess, serving: ServiceProcess, kafka, topics):
        self.args, self.ingest, self.serving, self.kafka, self.topics = args, ingest, serving, kafka, topics

    async def run_phase(self, phase: Phase, *, rate: float | None) -> None:
        by_entity: dict[str, list[dict[str, Any]]] = {}
        for e in phase.events:
            by_entity.setdefault(e["user_id"], []).append(e)
        async with httpx.AsyncClient(base_url=self.ingest.url, timeout=30,
                                     limits=httpx.Limits(max_connections=64)) as ingest, \
                httpx.AsyncClient(base_url=self.serving.url, timeout=30) as serving:
            async def send(events: list[dict[str, Any]], start: float | None) -> None:
                for e in events:
                    if start is not None:  # event i of the phase is due at start + i / rate
                        delay = start + e["_i"] / rate - time.monotonic()  # type: ignore[operator]
                        if delay > 0:
                            await asyncio.sleep(delay)
                    r = await ingest.post("/v1/events", json=body(e))
                    phase.ack[e["event_id"]] = time.time()
                    if r.status_code != 202:
                        raise RuntimeError(f"ingest answered {r.status_code}: {r.text}")

            t0 = time.monotonic()
            start = time.monotonic() if rate is not None else None
            senders = [send(evs, start) for evs in by_entity.values()]
            poller = asyncio.create_task(self.poll(serving, phase, by_entity))
            await asyncio.gather(*senders)
            phase.sent_s = time.monotonic() - t0
            await asyncio.wait_for(poller, self.args.timeout_s)

    async def poll(self, serving: httpx.AsyncClient, phase: Phase, by_entity: dict[str, list[dict]]) -> None:
        """Until serving shows every event: probe the entities with acknowledged events not shown yet."""
        next_unseen = {entity: 0 for entity in by_entity}
        while any(i < len(by_entity[e]) for e, i in next_unseen.items()):
            waiting = [e for e, i in next_unseen.items() if i < len(by_entity[e])
                       and by_entity[e][i]["event_id"] in phase.ack]
            if not waiting:
                await asyncio.sleep(0.001)
                continue
            now = datetime.now(timezone.utc).isoformat()
            probes = [{"user_id": e, "amount": 1.0, "merchant_category": "grocery", "country": "DE",
                       "channel": "web", "ts": now} for e in waiting]
            sent = time.time()
            r = await serving.post("/v1/predict/batch", json=probes)
            got = time.time()
            phase.polls += 1
            phase.poll_rtt.append(got - sent)
            if r.status_code != 200:
                raise RuntimeError(f"serving answered {r.status_code}: {r.text}")
            for entity, out in zip(waiting, r.json()["predictions"]):
                newest = out["staleness"]["state_event_time"]
                if newest is None:
                    continue
                newest_ms = round(datetime.fromisoformat(newest).timestamp() * 1000)
                events, i = by_entity[entity], next_unseen[entity]
                while i < len(events) and events[i]["_t_ms"] <= newest_ms:
                    phase.seen[events[i]["event_id"]] = got
                    i += 1
                next_unseen[entity] = i
            if self.args.poll_ms:
                await asyncio.sleep(self.args.poll_ms / 1000)

    async def snapshot_times(self, phases: list[Phase]) -> None:
        """The Kafka timestamp of the worker's snapshot of every event (from `features`)."""
        from aiokafka import TopicPartition

        from shared.kafka import make_consumer, partitions_of
        from shared.serialization import loads

        wanted = {e["event_id"]: p for p in phases for e in p.events}
        consumer = make_consumer(self.kafka, group_id=None)
        await consumer.start()
        try:
            topic = self.topics["features"]
            parts = [TopicPartition(topic, p) for p in sorted(await partitions_of(consumer, topic))]
            consumer.assign(parts)
            await consumer.seek_to_beginning(*parts)
            found = 0
            deadline = time.monotonic() + 60
            while found < len(wanted) and time.monotonic() < deadline:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    for rec in records:
                        event_id = loads(rec.value)["event_id"]
                        phase = wanted.get(event_id)
                        if phase is not None and event_id not in phase.snapshot:
                            phase.snapshot[event_id] = rec.timestamp / 1000
                            found += 1
        finally:
            await consumer.stop()


def summarize(phase: Phase) -> dict[str, Any]:
    ids = [e["event_id"] for e in phase.events]
    total = [(phase.seen[i] - phase.ack[i]) * 1000 for i in ids]
    worker = [(phase.snapshot[i] - phase.ack[i]) * 1000 for i in ids if i in phase.snapshot]
    replica = [(phase.seen[i] - phase.snapshot[i]) * 1000 for i in ids if i in phase.snapshot]

    def figures(values: list[float]) -> dict[str, float]:
        return {"p50": pct(values, 0.5), "p99": pct(values, 0.99), "max": max(values)} if values else {}

    return {"phase": phase.name, "events": len(ids), "sent_s": phase.sent_s,
            "rate": len(ids) / phase.sent_s if phase.sent_s else None, "polls": phase.polls,
            "poll_rtt_p50_ms": pct(phase.poll_rtt, 0.5) * 1000 if phase.poll_rtt else None,
            "ack_to_serving_ms": figures(total), "ack_to_snapshot_ms": figures(worker),
            "snapshot_to_serving_ms": figures(replica), "snapshots_found": len(worker)}


def report(rows: list[dict[str, Any]]) -> None:
    print(table(["phase", "events", "sent/s", "polls", "poll rtt p50 ms", "ack->serving p50 ms", "p99 ms",
                 "max ms"],
                [[r["phase"], f"{r['events']:,}", f"{r['rate']:,.0f}", f"{r['polls']:,}",
                  f"{r['poll_rtt_p50_ms']:.1f}", f"{r['ack_to_serving_ms']['p50']:.1f}",
                  f"{r['ack_to_serving_ms']['p99']:.1f}", f"{r['ack_to_serving_ms']['max']:.1f}"] for r in rows]))
    print("\nbreakdown (ms)")
    lines = []
    for r in rows:
        for stage in ("ack_to_snapshot_ms", "snapshot_to_serving_ms"):
            f = r[stage]
            label = {"ack_to_snapshot_ms": "ack -> worker snapshot",
                     "snapshot_to_serving_ms": "worker snapshot -> serving"}[stage]
            lines.append([r["phase"], label, f"{f['p50']:.1f}" if f else "", f"{f['p99']:.1f}" if f else "",
                          f"{f['max']:.1f}" if f else "", f"{r['snapshots_found']:,}"])
    print(table(["phase", "stage", "p50", "p99", "max", "events"], lines))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.freshness", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=2000, help="events of the steady phase (default %(default)s)")
    ap.add_argument("--rate", type=float, default=100.0, help="steady phase: events/s (default %(default)s)")
    ap.add_argument("--burst", type=int, default=2000, help="events of the burst phase; 0: none (default %(default)s)")
    ap.add_argument("--entities", type=int, default=8, help="users the events are spread over (default %(default)s)")
    ap.add_argument("--warmup", type=int, default=200, help="unmeasured events first (default %(default)s)")
    ap.add_argument("--poll-ms", type=float, default=1.0,
                    help="pause between two polls of serving (default %(default)s)")
    ap.add_argument("--timeout-s", type=float, default=120.0,
                    help="longest wait for serving to show a phase's events after the last ack (default %(default)s)")
    ap.add_argument("--json", action="store_true", help="also print the results as one JSON object (last line)")
    args = ap.parse_args(argv)
    if min(args.events, args.entities, args.rate) <= 0 or args.burst < 0 or args.warmup < 0:
        ap.error("--events, --entities and --rate must be > 0; --burst and --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    from shared.kafka import ensure_topics
    from shared.topics import Topics
    from tests.data import FRAUD, fitted_sklearn, fraud_training_examples, model_version

    args = parse_args(argv)
    kafka = require_kafka("bench.freshness")
    sigterm_as_exit()
    fast_httpx_without_sniffio()
    prefix = unique_prefix("freshness")
    topics = Topics(prefix)
    work = Path(tempfile.mkdtemp(prefix="loopline-freshness."))
    print(f"freshness bench: {machine()}, load average {os.getloadavg()[0]:.2f}, broker {kafka.bootstrap_servers}, "
          f"topic prefix {prefix!r}, work dir {work}")
    print(f"{args.warmup} warm-up events, then steady: {args.events:,} events at {args.rate:g}/s, burst: "
          f"{args.burst:,} events; over {args.entities} entities\n", flush=True)
    event_loop_runner()(ensure_topics(kafka, topics))
    base = {"KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers, "LOOPLINE_TOPIC_PREFIX": prefix,
            "LOOPLINE_SPEC_PATH": str(SPEC)}
    procs: list[ServiceProcess] = []

    def service(module: str, port_var: str, **env: str) -> ServiceProcess:
        port = free_port()
        proc = ServiceProcess(module, {**base, port_var: str(port), **env}, port=port, log_dir=work,
                              ready_timeout=240)
        procs.append(proc)
        return proc.start()

    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    try:
        service("services.features", "FEATURES_PORT", FEATURES_DATA_DIR=str(work / "features"),
                FEATURES_OFFLINE="false")
        ingest = service("services.ingest", "INGEST_PORT", INGEST_RAW_BRIDGE="false")
        model = fitted_sklearn(FRAUD, fraud_training_examples(1500, seed=21))
        version = model_version(FRAUD, str(work / "artifacts"), model, name="logreg", version=1, stage="champion")

        async def publish() -> None:
            from shared.kafka import make_producer
            producer = make_producer(kafka)
            await producer.start()
            try:
                await producer.send_and_wait(topics["models"], version.model_dump_json().encode(),
                                             key=version.key.encode())
            finally:
                await producer.stop()
        event_loop_runner()(publish())
        serving = service("services.serving", "SERVING_PORT", SERVING_DATA_DIR=str(work / "serving"),
                          SERVING_ARTIFACT_URL=str(work / "artifacts"))
        print(f"ingest, feature worker and serving ready in {time.perf_counter() - started:.1f} s", flush=True)
        bench = Bench(args, ingest, serving, kafka, topics)
        t0_ms = int(time.time() * 1000) - 3_600_000
        n = 0
        phases = []
        for name, count, rate in (("warm-up", args.warmup, None), ("steady", args.events, args.rate),
                                  ("burst", args.burst, None)):
            if count == 0:
                continue
            phase = Phase(name, make_events(count, args.entities, n, t0_ms, seed=n, phase=name))
            n += count
            event_loop_runner()(bench.run_phase(phase, rate=rate))
            phases.append(phase)
            print(f"  {name}: {count:,} events sent in {phase.sent_s:.1f} s, all shown by serving", flush=True)

        async def snapshots() -> None:
            async with OffsetWatcher(kafka) as watch:
                await watch.wait_end(topics["features"], n, timeout_s=60, poll_s=0.2)
            await bench.snapshot_times(phases)
        event_loop_runner()(snapshots())
        rows = [summarize(p) for p in phases if p.name != "warm-up"]
    except BaseException:
        for proc in procs:
            if proc.proc is not None:
                print(f"\n{proc.module} log ({proc.log_path}), last lines:\n{proc.tail(15)}", file=sys.stderr)
        raise
    finally:
        for proc in reversed(procs):
            proc.stop()
    print(f"\nmeasured in {time.perf_counter() - started:.0f} s; load average now "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    report(rows)
    print("\n" + EXPLAIN.replace(" K ", f" {args.entities} ").replace(" R ", f" {args.rate:g} ")
          .replace("POLL", f"{args.poll_ms:g}").replace("WARMUP", f"{args.warmup}"))
    if args.json:
        print(json.dumps({"config": vars(args), "rows": rows}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
