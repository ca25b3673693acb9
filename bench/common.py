"""Helpers shared by the benchmarks (not a benchmark itself).

A benchmark is a module under bench/, run as `python -m bench.<name>`; deploy/run-bench.sh runs
each with KAFKA_BOOTSTRAP_SERVERS pointing at a throwaway broker; it prints its figures as tables.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import statistics
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import TopicPartition

from deploy.procs import ROOT  # noqa: F401  (the benchmarks' repository root)
from shared.kafka import make_consumer
from shared.settings import KafkaSettings

CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- environment

def require_kafka(module: str) -> KafkaSettings:
    """The broker from KAFKA_BOOTSTRAP_SERVERS, or exit with how to get one."""
    if not os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        sys.exit(f"{module}: KAFKA_BOOTSTRAP_SERVERS is not set. Run the benchmarks with `make bench`, or "
                 f"this one with `deploy/with-kafka.sh .venv/bin/python -m {module}` (a throwaway broker).")
    return KafkaSettings()


def unique_prefix(name: str) -> str:
    """Topic/group prefix that isolates one benchmark run."""
    return f"bench{name}{uuid.uuid4().hex[:8]}."


def fast_httpx_without_sniffio() -> bool:
    """httpcore 1.0 runs `import sniffio` on every connection-pool lock setup (several per request);
    without sniffio installed (anyio 4 no longer needs it) each is a failed import that searches
    sys.path on disk: ~1-2 ms of client CPU per request. A None entry makes the import fail at once,
    and httpcore falls back to "asyncio", which is what it would detect anyway. True if applied."""
    try:
        import sniffio  # noqa: F401
        return False
    except ImportError:
        sys.modules["sniffio"] = None  # type: ignore[assignment]
        return True


def sigterm_as_exit() -> None:
    """SIGTERM (e.g. a CI timeout) unwinds like Ctrl-C, so `finally` blocks stop child processes."""
    def _raise(signum, frame):  # noqa: ARG001
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, _raise)


def event_loop_runner():
    """uvloop's runner when available (the services use uvloop too), else asyncio.run."""
    try:
        import uvloop
        return uvloop.run
    except ImportError:  # pragma: no cover
        return asyncio.run


def machine() -> str:
    return f"{os.cpu_count()} CPU(s), Python {sys.version.split()[0]}"


# ---------------------------------------------------------------- data

_CATEGORIES = ("grocery", "fuel", "restaurants", "travel", "electronics",
               "fashion", "gaming", "gift_cards", "pharmacy", "utilities")
_COUNTRIES = ("DE", "FR", "ES", "IT", "NL", "PL", "GB", "US", "BR", "NG")
_CHANNELS = ("pos", "web", "app")


def fraud_events(n: int, seed: int = 7, users: int = 5000) -> list[dict[str, Any]]:
    """`n` valid events for examples/fraud/pipeline.yaml (seeded; independent of examples/fraud/generate.py)."""
    rng = random.Random(seed)
    t_ms = 1_767_225_600_000  # 2026-01-01T00:00:00Z
    out = []
    for _ in range(n):
        t_ms += rng.randint(1, 2000)
        secs, ms = divmod(t_ms, 1000)
        out.append({
            "user_id": f"u{rng.randrange(users):05d}",
            "amount": round(min(50000.0, rng.lognormvariate(3.5, 1.1)), 2),
            "merchant_category": rng.choice(_CATEGORIES),
            "country": rng.choice(_COUNTRIES),
            "channel": rng.choice(_CHANNELS),
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{ms:03d}Z",
        })
    return out


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


# ---------------------------------------------------------------- CPU accounting

def proc_cpu_s(pid: int | None) -> float | None:
    """User+system CPU seconds consumed so far by a process (None if unknown/gone)."""
    if pid is None:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15 of stat)


def machine_busy_s() -> float | None:
    """CPU seconds all processes of the machine have been busy (non-idle) since boot, from /proc/stat."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    busy = sum(fields[:8]) - idle  # user nice system idle iowait irq softirq steal; guest is inside user
    return busy / CLK_TCK


def broker_pid() -> int | None:
    """The throwaway broker's JVM pid (deploy/with-kafka.sh exports KAFKA_DATA_DIR), if local."""
    data = os.environ.get("KAFKA_DATA_DIR")
    if not data:
        return None
    with contextlib.suppress(OSError, ValueError):
        return int((Path(data) / "kafka.pid").read_text().strip())
    return None


@dataclass
class CpuMeter:
    """CPU seconds used by named processes between `start()` and `stop()` (this process: 'bench'), and
    by everything else on the machine ('other': other users' tests, the kernel's own threads)."""

    pids: dict[str, int | None]
    used: dict[str, float | None] = field(default_factory=dict)

    def _now(self) -> dict[str, float | None]:
        snap = {name: proc_cpu_s(pid) for name, pid in self.pids.items()}
        snap["bench"] = time.process_time()
        snap["machine"] = machine_busy_s()
        return snap

    def start(self) -> CpuMeter:
        self._start = self._now()
        return self

    def stop(self) -> dict[str, float | None]:
        end = self._now()
        self.used = {k: (None if end[k] is None or self._start[k] is None else end[k] - self._start[k])
                     for k in end}
        machine = self.used.pop("machine")
        if machine is not None and all(v is not None for v in self.used.values()):
            self.used["other"] = max(0.0, machine - sum(self.used.values()))  # type: ignore[arg-type]
        return self.used


# ---------------------------------------------------------------- Kafka observation

class OffsetWatcher:
    """Reads end offsets of topics (no consumer group of its own)."""

    def __init__(self, kafka: KafkaSettings):
        self.kafka = kafka
        self.consumer = make_consumer(kafka, group_id=None)
        self._parts: dict[str, list[TopicPartition]] = {}

    async def __aenter__(self) -> OffsetWatcher:
        await self.consumer.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.consumer.stop()

    async def partitions(self, topic: str) -> list[TopicPartition]:
        if topic not in self._parts:
            for _ in range(100):
                await self.consumer._client.force_metadata_update()  # noqa: SLF001
                ps = self.consumer.partitions_for_topic(topic)
                if ps:
                    self._parts[topic] = [TopicPartition(topic, p) for p in sorted(ps)]
                    break
                await asyncio.sleep(0.1)
            else:
                raise RuntimeError(f"topic {topic} has no partitions")
        return self._parts[topic]

    async def end(self, topic: str) -> int:
        """Sum of the partitions' end offsets (records ever written, for a topic without compaction)."""
        ends = await self.consumer.end_offsets(await self.partitions(topic))
        return sum(ends.values())

    async def wait_end(self, topic: str, target: int, timeout_s: float, poll_s: float = 0.02
                       ) -> list[tuple[float, int]]:
        """Poll until the topic's end offsets reach `target`; return the (monotonic time, end) samples."""
        samples: list[tuple[float, int]] = []
        deadline = time.monotonic() + timeout_s
        while True:
            n = await self.end(topic)
            samples.append((time.monotonic(), n))
            if n >= target:
                return samples
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: {n} of {target} records after {timeout_s}s")
            await asyncio.sleep(poll_s)


class GroupOffsets:
    """Committed offsets and end offsets of a consumer group's topics, read by a consumer that never
    joins the group (as the stream runtime reads its own lag)."""

    def __init__(self, kafka: KafkaSettings, group: str, topics: Sequence[str]):
        self.topics = list(topics)
        self.consumer = make_consumer(kafka, group_id=group)
        self.watch = OffsetWatcher(kafka)
        self._parts: list[TopicPartition] = []

    async def __aenter__(self) -> GroupOffsets:
        await self.consumer.start()
        await self.watch.__aenter__()
        for topic in self.topics:
            self._parts += await self.watch.partitions(topic)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.watch.__aexit__(*exc)
        await self.consumer.stop()

    async def read(self) -> tuple[int, int]:
        """(records committed by the group, records in its topics) summed over every partition."""
        ends = await self.watch.consumer.end_offsets(self._parts)
        committed = 0
        for tp in self._parts:
            committed += (await self.consumer.committed(tp)) or 0
        return committed, sum(ends.values())


# ---------------------------------------------------------------- output

def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    numeric = [all(_numberish(r[i]) for r in cells[1:]) for i in range(len(headers))]

    def line(r: list[str]) -> str:
        return "  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(r, widths, numeric)).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), sep, *(line(r) for r in cells[1:])])


def _numberish(s: str) -> bool:
    s = s.rstrip("x%").replace(",", "").replace("±", "")
    if s in ("", "-"):
        return True
    try:
        float(s)
        return True
    except ValueError:
        return False


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def spread(values: Sequence[float]) -> str:
    """'min..max' of repeated measurements."""
    return f"{min(values):,.0f}..{max(values):,.0f}" if values else ""

