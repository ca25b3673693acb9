"""Feature worker: throughput vs a bare aiokafka loop, freshness at a steady rate, memory per entity.

    deploy/with-kafka.sh .venv/bin/python -m bench.features [--events N] [--rounds R]
        [--entities E] [--rate R] [--skip-freshness] [--skip-memory] [--profile S] [--json]
    make bench        (deploy/run-bench.sh: every benchmark against a throwaway broker)

For the fraud example's 13 features (examples/fraud/pipeline.yaml):
 1. throughput of `python -m services.features` (a real faust worker process) draining N pre-produced
    Event envelopes: events/s from the first to the N-th snapshot on `<prefix>features`;
 2. side by side, a bare aiokafka consume -> compute -> produce loop in its own process doing the same
    per-event work (decode, services.features.domain.process_event, snapshot and state records sent
    per fetch through the batch API, ack wait, commit);
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
import os
import shutil
import sys
import time
from pathlib import Path

from bench.common import fast_httpx_without_sniffio, machine, require_kafka, sigterm_as_exit
from bench.features import freshness, memory, throughput
from bench.features.data import Data
from bench.features.harness import Harness, log
from bench.features.throughput import Throughput

SHARED_CORES = (f"The broker, the feature worker (or the bare loop), the ingest service and this load "
                f"generator all run on this machine and share its {os.cpu_count()} cores; figures include "
                f"that contention.")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.features", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=30_000,
                    help="events per throughput run (default %(default)s)")
    ap.add_argument("--rounds", type=int, default=2, help="worker + bare rounds (default %(default)s)")
    ap.add_argument("--entities", type=int, default=200_000,
                    help="distinct entities for the memory test (default %(default)s; e.g. 1000000)")
    ap.add_argument("--rate", type=float, default=1000.0,
                    help="freshness load, events/s (default %(default)s)")
    ap.add_argument("--no-bare-freshness", action="store_true",
                    help="skip the bare loop's freshness run (the same load through the bare aiokafka loop)")
    ap.add_argument("--fallback-rates", type=lambda v: [float(x) for x in v.split(",") if x],
                    default=[300.0, 100.0],
                    help="lower freshness rates tried in turn while a rate is not sustained "
                         "(default 300,100)")
    ap.add_argument("--duration", type=float, default=20.0,
                    help="freshness seconds measured (default %(default)s)")
    ap.add_argument("--freshness-rounds", type=int, default=2,
                    help="freshness rounds, each a worker run and a bare-loop run, order alternating "
                         "(default %(default)s)")
    ap.add_argument("--freshness-warmup", type=float, default=40.0, metavar="SECONDS",
                    help="unreported run of the same load through the worker first, warming the broker "
                         "(default %(default)s)")
    ap.add_argument("--batch", type=int, default=10,
                    help="events per freshness POST (default %(default)s)")
    ap.add_argument("--freshness-offline", action="store_true",
                    help="run the worker's offline writer during freshness")
    ap.add_argument("--no-offline-round", dest="offline_round", action="store_false",
                    help="skip the throughput run with the offline writer on")
    ap.add_argument("--profile", type=float, default=0.0, metavar="SECONDS",
                    help="one extra worker run profiled with py-spy for SECONDS (needs ptrace; not counted)")
    ap.add_argument("--profile-out", type=Path, default=None,
                    help="also keep py-spy's raw stacks in this file")
    ap.add_argument("--no-join-wait", dest="join_wait", action="store_false",
                    help="do not wait for the worker's label join to catch up after each throughput run")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-freshness", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--json", action="store_true",
                    help="also print the results as one JSON object (last line)")
    args = ap.parse_args(argv)
    if min(args.events, args.entities, args.batch, args.freshness_rounds) < 1 or args.rounds < 0 \
            or args.rate <= 0:
        ap.error("counts and rates must be >= 1")
    return args


async def run(h: Harness, data: Data, expected: int) -> tuple[Throughput, list[dict], dict | None]:
    """The figures in their order: throughput, freshness, memory (each unless skipped)."""
    a = h.args
    drains = Throughput(h)
    if not a.skip_throughput:
        log(f"\n-- throughput: {a.rounds} round(s) of worker then bare loop, {len(data.items):,} events each")
        await drains.measure(data, expected)
    fresh = [] if a.skip_freshness else await freshness.measure(h)
    mem = None
    if not a.skip_memory:
        log("\n-- memory")
        mem = await memory.measure(h, data, a.entities)
    return drains, fresh, mem


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    kafka = require_kafka("bench.features")
    sigterm_as_exit()
    fast_httpx_without_sniffio()
    # aiokafka logs (and retries) NotLeaderForPartition right after a topic's creation
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    started = time.perf_counter()
    log(f"features bench: {machine()}, load average {os.getloadavg()[0]:.2f}, "
        f"broker {kafka.bootstrap_servers}")
    log(SHARED_CORES)
    data = Data(args.events)
    compute = data.compute_only()
    expected = compute["snapshots"]
    log(f"{len(data.items):,} fraud events of {data.users} users prepared; in-process compute alone "
        f"(orjson + load/apply/dump + snapshot dumps): {compute['events_per_s']:,.0f} ev/s; "
        f"{expected:,} snapshots expected")
    h = Harness(args, kafka)
    drains, fresh, mem = asyncio.run(run(h, data, expected))  # on failure, logs stay in h.tmp
    result = throughput.report(drains, data, compute, args)
    if fresh:
        freshness.report(fresh)
        result["freshness"] = fresh
    if mem:
        memory.report(mem)
        result["memory"] = mem
    if h.keep_tmp:
        log(f"logs kept in {h.tmp}")
    else:
        shutil.rmtree(h.tmp, ignore_errors=True)
    log(f"\n{SHARED_CORES}\nTotal {time.perf_counter() - started:.0f} s.")
    if args.json:
        result["config"] = vars(args)
        print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
