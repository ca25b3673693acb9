"""Figure 4, memory: the worker's RSS before and after E events of E distinct entities; and its report."""
from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from bench.common import OffsetWatcher, proc_cpu_s, table, unique_prefix
from bench.features.data import Data, distinct_entity_items, produce
from bench.features.harness import Harness, log
from shared.kafka import ensure_topics, make_producer
from shared.serialization import utcnow
from shared.topics import Topics


async def measure(h: Harness, data: Data, entities: int, warm: int = 2000) -> dict[str, Any]:
    topics = Topics(unique_prefix("memory"))
    await ensure_topics(h.kafka, topics)
    svc = h.worker(topics.prefix, "memory")
    data_dir = h.tmp / "memory" / "data"
    now = utcnow()
    samples: list[tuple[int, int]] = []
    log(f"  memory: worker with {entities:,} events of distinct entities (after a {warm:,}-event warm-up)")
    producer = make_producer(h.kafka, linger_ms=5)
    await producer.start()
    try:
        await asyncio.to_thread(svc.start)
        pid = svc.proc.pid
        async with OffsetWatcher(h.kafka) as watch:
            await produce(h.kafka, topics["events"],
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
                pending = asyncio.create_task(produce(h.kafka, topics["events"], items, producer))
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
                    rss_mib = rss_kib(pid)['VmRSS'] / 1024
                    log(f"    ... {n:,}/{entities:,} snapshots, VmRSS {rss_mib:,.0f} MiB")
                await asyncio.sleep(0.2)
            secs = time.monotonic() - t0
            at_snapshots = rss_kib(pid)
            # the label join lags behind a backlog: measure once it holds every snapshot too
            join = await h.join_done(watch, topics, warm + entities, svc, first_seen=(t0, proc_cpu_s(pid)))
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
           "at_last_snapshot_kib": at_snapshots,
           "join_after_last_snapshot_s": join and join["after_last_snapshot_s"],
           "samples": [(n, kib / 1024) for n, kib in samples]}
    log(f"    after {entities:,} entities in {secs:.0f} s ({entities / secs:,.0f} ev/s): VmRSS "
        f"{after['VmRSS'] / 1024:,.1f} MiB (+{grow:,.1f}), peak {after['VmHWM'] / 1024:,.1f} MiB, "
        f"{res['mib_per_100k']:.1f} MiB per 100k entities; RocksDB dir +{res['disk_growth_mib']:.1f} MiB "
        f"(measured after the label join caught up, "
        f"{res['join_after_last_snapshot_s'] or float('nan'):.0f} s after the last snapshot)")
    return res


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


def report(m: dict) -> None:
    log("\n== 4. Memory of the worker process (VmRSS from /proc/<pid>/status)")
    b, a, z = m["before_kib"], m["after_kib"], m["at_last_snapshot_kib"]
    columns = ("VmRSS", "RssAnon", "RssFile", "VmHWM")

    def row(label: str, kib: dict[str, int]) -> list[str]:
        return [label, *(f"{kib[c] / 1024:,.1f}" for c in columns)]

    log(table(["", *(f"{c} MiB" for c in columns)],
              [row("before", b), row("at the last snapshot (join behind)", z),
               row(f"after {m['entities']:,} entities + join", a)]))
    log(f"growth {m['growth_mib']:,.1f} MiB = {m['mib_per_100k']:.1f} MiB per 100k entities "
        f"(anonymous memory {m['anon_mib_per_100k']:.1f} MiB per 100k); "
        f"RocksDB data dir +{m['disk_growth_mib']:.1f} MiB; "
        f"processed at {m['events_per_s']:,.0f} ev/s (producer running alongside)")
    log("VmRSS along the way (snapshots seen -> MiB): "
        + ", ".join(f"{n:,}->{mib:,.0f}" for n, mib in m["samples"]))
    half = [(n, mib) for n, mib in m["samples"] if n >= m["entities"] // 2]
    if len(half) >= 2 and half[-1][0] > half[0][0]:
        (n0, r0), (n1, r1) = half[0], half[-1]
        log(f"second half ({n0:,} -> {n1:,} entities): {(r1 - r0) / (n1 - n0) * 100_000:.1f} MiB "
            f"per 100k entities")
    log("Each event is of a new entity, so this counts one entity-state entry and one label-join entry "
        "(the whole snapshot, kept for the label's max_delay, and its two expiry-index keys) per event. Both "
        "tables are faust RocksDB stores (one DB per partition and table) with the write-buffer and "
        "block-cache sizes of the stream runtime (shared/stream/app.py, StreamApp.table).")
