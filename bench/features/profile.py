"""Where the worker's time goes: py-spy on a worker during a separate drain (`--profile SECONDS`),
aggregated by component, key function and leaf function."""
from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from bench.common import ROOT, OffsetWatcher, table
from bench.features.harness import Harness, log


async def py_spy(h: Harness, pid: int, seconds: float, watch: OffsetWatcher, topic: str) -> dict[str, Any]:
    """Once the worker emits snapshots, py-spy it for `seconds` (while it still drains)."""
    while await watch.end(topic) == 0:
        await asyncio.sleep(0.05)
    out = h.tmp / f"py-spy-{pid}.txt"
    exe = Path(sys.executable).parent / "py-spy"
    proc = await asyncio.create_subprocess_exec(
        str(exe if exe.exists() else "py-spy"), "record", "-p", str(pid), "-d", str(int(seconds)),
        "-f", "raw", "-o", str(out), "--nonblocking", "-r", "100",
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, err = await proc.communicate()
    if proc.returncode != 0 or not out.exists():
        return {"error": err.decode(errors="replace")[-500:]}
    if h.args.profile_out:
        shutil.copy(out, h.args.profile_out)
    return aggregate_py_spy(out.read_text(), seconds)


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
    ("event stream handler", "__call__ (services/features/streams.py"),
    ("process_event", "process_event (services/features/domain.py"),
    ("FeatureStore.process", "process (shared/features.py"),
    ("FeatureEngine.query", "query (shared/features.py"),
    ("FeatureEngine.insert", "insert (shared/features.py"),
    ("FeatureEngine.decode (load)", "decode (shared/features.py"),
    ("FeatureEngine.encode_head", "encode_head (shared/features.py"),
    ("table get/set (stream runtime)", "shared/stream/tables.py"),
    ("runtime send/changelog", "shared/stream/app.py"),
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


def report(p: dict[str, Any], seconds: float) -> None:
    """The profile's tables (or why there is none)."""
    if "error" in p:
        log(f"\npy-spy failed: {p['error']}")
        return
    tot = max(1, p["samples"])
    log(f"\n== Where the worker's time goes (py-spy {seconds:.0f} s at 100 Hz during a separate "
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
