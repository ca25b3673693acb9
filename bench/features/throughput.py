"""Figures 1+2: the feature worker (`python -m services.features`) draining N pre-produced events,
side by side with the bare loop doing the same per-event work, in rounds; and their report."""
from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from bench.common import CpuMeter, OffsetWatcher, broker_pid, median, proc_cpu_s, spread, table
from bench.features import profile
from bench.features.bare_loop import bare_loop_main
from bench.features.data import Data
from bench.features.harness import POLL_S, Harness, fetch_metrics, log, metric_sum, spawn, stop_process
from shared.kafka import ensure_topics
from shared.topics import Topics

GOAL_EVENTS_PER_S = 5000.0
GOAL_RATIO = 0.5

BARE_EXPLAIN = """\
worker: `python -m services.features` (faust, offline writer off unless noted), N events pre-produced into a fresh
  prefix's `events`; events/s from the first to the N-th snapshot on `features` (end offsets polled every 50 ms).
  "incl. join": until the worker's label-join table changelog also holds 3N records (its join stream reads
  snapshots.by-event and writes three table entries per snapshot: the join entry and its two expiry-index keys).
bare loop: a separate process (multiprocessing spawn, uvloop like the worker) on the same
  pre-produced topic: shared.kafka.make_consumer (own group, manual commit per batch, 1000 records/poll), per
  event services.features.domain.decode_event + process_event (the worker's functions, on a FeatureStore with
  the worker's cache sizes over a dict per partition) + 2 records (features, snapshots.by-event keyed by
  event_id); per batch one record per state key written (head, chunk, seen records; the last write of each)
  to a compacted topic; all sent like the worker sends them (aiokafka's batch API: one record batch per topic
  partition per fetch; acks=all), then await every ack of the batch and commit.
  It has no label join, no RocksDB, no metrics: the same per-event work as the worker's first agent."""


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

class Throughput:
    """The drains of one run, in the order they were timed."""

    def __init__(self, h: Harness):
        self.h = h
        self.drains: list[Drain] = []
        self.profile: dict[str, Any] | None = None
        # (monotonic time, process CPU s) at the last drain's first snapshot
        self.first_seen: tuple[float, float | None] = (0.0, None)

    async def measure(self, data: Data, expected: int) -> None:
        a = self.h.args
        async with OffsetWatcher(self.h.kafka) as watch:
            # A fresh broker JIT-compiles for its first ~30 s of load (C2 threads took several CPU-s):
            # warm it with one uncounted bare drain so that round 1's worker does not pay for it.
            warm = await self.h.fresh_events_topic("warmup", data.items)
            await self.bare_drain(watch, warm, len(data.items), expected, 0, record=False)
            for r in range(1, a.rounds + 1):
                _, topics = await self.worker_drain(watch, data, expected, r)
                await self.bare_drain(watch, topics, len(data.items), expected, r)
            if a.offline_round:
                await self.worker_drain(watch, data, expected, a.rounds + 1, offline=True)
            if a.profile:
                await self.worker_drain(watch, data, expected, a.rounds + 2, profile_s=a.profile)

    async def worker_drain(self, watch: OffsetWatcher, data: Data, expected: int, round_no: int, *,
                           offline: bool = False, topics: Topics | None = None,
                           profile_s: float = 0.0) -> tuple[Drain, Topics]:
        name = "worker+offline" if offline else ("worker (profiled)" if profile_s else "worker")
        log(f"  round {round_no}: {name}")
        topics = topics or await self.h.fresh_events_topic("features", data.items)
        svc = self.h.worker(topics.prefix, f"w{round_no}{'o' if offline else ''}{'p' if profile_s else ''}",
                            offline)
        spawned = time.monotonic()
        await asyncio.to_thread(svc.start, False)
        prof_task = None
        try:
            if profile_s:
                prof_task = asyncio.create_task(
                    profile.py_spy(self.h, svc.proc.pid, profile_s, watch, topics["features"]))
            secs, startup, n_first, cpu = await self.timed_drain(
                watch, topics["features"], 0, expected, svc.proc.pid, lambda: svc.running, spawned,
                timeout_s=180 + expected / 100)
            join = (await self.h.join_done(watch, topics, expected, svc, self.first_seen)
                    if self.h.args.join_wait else None)
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
            log(f"    label join (snapshots.by-event -> label-join table) done "
                f"{join['after_last_snapshot_s']:.1f} s after the last snapshot: "
                f"all work {join['events_per_s']:,.0f} ev/s, "
                f"{join['worker_cpu_us_per_event'] or 0:,.0f} µs worker CPU/event")
        return d, topics

    async def bare_drain(self, watch: OffsetWatcher, topics: Topics, n_events: int, expected: int,
                         round_no: int, record: bool = True) -> Drain:
        log(f"  round {round_no}: bare aiokafka loop{'' if record else ' (broker warm-up, not counted)'}")
        out_prefix = topics.prefix + "bare."
        out = Topics(out_prefix)
        await ensure_topics(self.h.kafka, out, names=[out["features"], out["snapshots.by-event"]])
        spawned = time.monotonic()
        proc = spawn(bare_loop_main, self.h.kafka.bootstrap_servers, topics["events"], out_prefix,
                     f"{out_prefix}bare.{round_no}", n_events)
        try:
            secs, startup, n_first, cpu = await self.timed_drain(
                watch, out["features"], 0, expected, proc.pid, proc.is_alive, spawned,
                timeout_s=180 + expected / 100)
        finally:
            stop_process(proc)
        d = Drain("bare loop", round_no, expected - n_first, secs, startup, cpu)
        if record:
            self.report_drain(d)
        return d

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
                rate = (n - first[1]) / (now - first[0])
                log(f"    ... {n:,}/{target:,} snapshots, {rate:,.0f} ev/s so far")
            await asyncio.sleep(POLL_S)
        assert first is not None and meter is not None
        return now - first[0], first[0] - spawned, first[1], meter.stop()

    def report_drain(self, d: Drain) -> None:
        self.drains.append(d)
        svc = d.cpu_s.get("service")
        per = f", {svc / d.events * 1e6:,.0f} µs CPU/event in the process" if svc is not None else ""
        log(f"    {d.events:,} snapshots in {d.seconds:.2f} s = {d.rate:,.0f} ev/s (first snapshot "
            f"{d.startup_s:.1f} s after start{per}; other load {d.cpu_s.get('other') or 0:.1f} CPU-s)")


def report(t: Throughput, data: Data, compute: dict, args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"compute_only": compute}
    log("\n== 1+2. Throughput (events/s = snapshots from the first to the N-th on the output topic "
        "/ seconds)")
    rows = []
    by_round = {d.round: {} for d in t.drains}
    for d in t.drains:
        by_round[d.round][d.name] = d
    for d in t.drains:
        svc = d.cpu_s.get("service")
        bare = by_round[d.round].get("bare loop")
        join = d.extra.get("join")
        rows.append([d.round, d.name, f"{d.events:,}", f"{d.seconds:.2f}", f"{d.rate:,.0f}",
                     f"{join['events_per_s']:,.0f}" if join else "",
                     f"{d.rate / bare.rate:.2f}x" if bare and d.name == "worker" else "",
                     f"{svc / d.events * 1e6:,.0f}" if svc is not None else "-",
                     f"{(d.cpu_s.get('broker') or 0) / d.events * 1e6:,.0f}",
                     f"{(d.cpu_s.get('other') or 0) / d.seconds:.2f}", f"{d.startup_s:.1f}"])
    rows.append(["-", "compute only, in-process (no Kafka)", f"{compute['events']:,}",
                 f"{compute['seconds']:.2f}", f"{compute['events_per_s']:,.0f}", "", "",
                 f"{compute['seconds'] / compute['events'] * 1e6:,.0f}", "-", "-", "-"])
    log(table(["round", "run", "snapshots", "seconds", "events/s", "incl. join ev/s", "worker/bare",
               "proc µs/ev", "broker µs/ev", "other cores", "startup s"], rows))
    workers = [d.rate for d in t.drains if d.name == "worker"]
    bares = [d.rate for d in t.drains if d.name == "bare loop"]
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
            if ("worker" in r and "bare loop" in r and r["worker"].cpu_s.get("service")
                    and r["bare loop"].cpu_s.get("service")):
                cpu_ratio.append((r["bare loop"].cpu_s["service"] / r["bare loop"].events)
                                 / (r["worker"].cpu_s["service"] / r["worker"].events))
        if cpu_ratio:
            log(f"CPU per snapshot, bare/worker (less sensitive to other load than events/s): "
                f"{', '.join(f'{x:.2f}x' for x in cpu_ratio)}")
        g1, g2 = w >= GOAL_EVENTS_PER_S, ratio >= GOAL_RATIO
        log(f"goal >= {GOAL_EVENTS_PER_S:,.0f} events/s per worker: {w:,.0f} -> {'PASS' if g1 else 'MISS'}")
        log(f"goal >= {GOAL_RATIO}x the bare loop:          {ratio:.2f}x -> {'PASS' if g2 else 'MISS'}")
        joined = [d.extra["join"]["events_per_s"] for d in t.drains
                  if d.name == "worker" and d.extra.get("join")]
        if joined:
            log(f"worker incl. its label join (until every snapshot is in the label-join table): median "
                f"{median(joined):,.0f} ev/s (spread {spread(joined)})")
        result["throughput"] = {"worker_median": w, "worker_incl_join": joined, "cpu_ratio": cpu_ratio,
                                "bare_median": b, "ratio_median": ratio, "ratios": ratios,
                                "worker_runs": workers, "bare_runs": bares,
                                "goals": {"events_per_s": {"goal": GOAL_EVENTS_PER_S, "pass": g1},
                                          "ratio": {"goal": GOAL_RATIO, "pass": g2}}}
    off = [d.rate for d in t.drains if d.name == "worker+offline"]
    if off:
        log(f"worker with the offline writer on: {off[0]:,.0f} ev/s "
            f"({off[0] / median(workers):.2f}x the worker without it)" if workers else "")
        result.setdefault("throughput", {})["worker_offline"] = off[0]
    log(BARE_EXPLAIN)
    log("proc µs/ev: CPU time (user+sys) of the worker / bare-loop process per snapshot, first -> N-th "
        "snapshot; broker µs/ev likewise; other cores: CPU used meanwhile by everything else on the machine "
        "(other people's tests): above ~0.2 the figures are disturbed.")
    result["drains"] = [{**d.__dict__, "rate": d.rate} for d in t.drains]
    log(f"(data: {len(data.items):,} events of {data.users} users from examples/fraud/generate.py, seed 42; "
        f"entity state after the run: mean {compute['state_bytes_mean']:,.0f} B, "
        f"max {compute['state_bytes_max']:,} B; "
        f"expected snapshots {compute['snapshots']:,}, statuses {compute['statuses']})")

    if t.profile:
        result["profile"] = t.profile
        profile.report(t.profile, args.profile)
    return result
