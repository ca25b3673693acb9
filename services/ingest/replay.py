"""Replay: re-read a time or offset range of a topic, or a Parquet/CSV/NDJSON file, and feed it
through the pipeline again (into the `events` topic, or with --labels into `labels`).

    python -m services.ingest.replay --topic events --start 2026-01-01T00:00Z --end 2026-01-02T00:00Z
    python -m services.ingest.replay --topic events.dlq --from-offset 0 --to-offset 500
    python -m services.ingest.replay --file var/offline/events        (a Parquet dataset folder)
    python -m services.ingest.replay --file history.csv --dry-run
    python -m services.ingest.replay --labels --file outcomes.ndjson
        (one label per line: {"event_id": "...", "value": true, "observed_at": "2026-01-01T10:42:00Z"})

Labels: `observed_at` (when the outcome became known) decides whether a label is within the spec's
label.max_delay of its event. A label without it counts as observed now, which is right for live
traffic and wrong for history: a backfill of old labels without observed_at is dead-lettered as late.
So every label replayed from a file must carry its observed_at; one without it is refused here.

Every record is validated against the spec again; an event keeps its event_id (raw records without
one get the id derived from where they were read), so the feature service dedups what it has seen.
Records that fail validation are counted and listed, never produced. Typical use: rebuild features
after changing their definitions (the feature worker's state is keyed by the definitions' hash).
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from aiokafka import AIOKafkaConsumer, TopicPartition

from services.ingest.app import limits_of
from services.ingest.config import IngestSettings
from services.ingest.domain import Kind, to_outgoing
from shared.errors import ValidationFailed
from shared.events import EventValidator, derived_event_id, input_of
from shared.kafka import make_consumer, make_producer, read_range, topic_range
from shared.serialization import loads, parse_time, utcnow
from shared.spec import load_spec
from shared.topics import Topics


@dataclass
class Source:
    """One record to replay: its JSON value and where it came from (for derived ids and errors)."""

    value: Any
    origin: str
    origin_id: str


class Progress:
    """A one-line progress bar on stderr."""

    def __init__(self, total: int | None, out=sys.stderr):
        self.total, self.out = total, out
        self.done = self.bad = 0
        self.started = self.shown = time.monotonic()

    def step(self, ok: bool) -> None:
        self.done += 1
        self.bad += not ok
        if time.monotonic() - self.shown > 0.5:
            self.show()

    def show(self, end: str = "\r") -> None:
        self.shown = time.monotonic()
        rate = self.done / max(1e-9, self.shown - self.started)
        if self.total:
            filled = int(30 * self.done / self.total)
            bar = f"[{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total}"
        else:
            bar = f"{self.done}"
        self.out.write(f"replay {bar} {rate:,.0f}/s, {self.bad} invalid{end}")
        self.out.flush()


def raw_item(src: Source, kind: Kind) -> Any:
    """What a client would have sent for a replayed record: records read back from `events` or
    `labels` are turned into their input shape (event fields + event_id; LabelIn)."""
    value = input_of(src.value, kind)
    if not isinstance(value, dict):
        return value
    if kind == "label" and not value.get("observed_at"):
        raise ValidationFailed([{"field": "observed_at", "code": "missing", "reason": (
            "a replayed label needs observed_at: without it the label counts as observed now and is "
            "dead-lettered as late when its event is older than the spec's label.max_delay")}])
    return value


def read_file(path: Path) -> Iterator[Source]:
    """Rows of a Parquet file or dataset folder, a CSV or an NDJSON file, as raw event dicts."""
    if path.is_dir() or path.suffix == ".parquet":
        df = pd.read_parquet(path)
    elif path.suffix == ".csv":
        df = pd.read_csv(path)
    elif path.suffix in (".ndjson", ".jsonl"):
        for n, line in enumerate(path.read_bytes().splitlines()):
            if line.strip():
                yield Source(loads(line), f"{path}:{n + 1}", derived_event_id(str(path), 0, n))
        return
    else:
        raise SystemExit(f"unsupported file type {path.suffix}; use .parquet, .csv, .ndjson or a Parquet folder")
    keep = [c for c in df.columns if c not in ("entity", "occurred_at", "ingested_at", "source", "date",
                                               "feature_hash")]
    for n, row in enumerate(df[keep].to_dict("records")):
        clean = {k: _plain(v) for k, v in row.items() if not _missing(v)}
        yield Source(clean, f"{path}#{n}", clean.get("event_id") or derived_event_id(str(path), 0, n))


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and v != v) or v is pd.NaT


def _plain(v: Any) -> Any:
    if isinstance(v, pd.Timestamp):
        return v.isoformat()
    if hasattr(v, "item"):  # numpy scalar
        return v.item()
    return v


async def read_sources(consumer: AIOKafkaConsumer,
                       bounds: dict[TopicPartition, tuple[int, int]]) -> AsyncIterator[Source]:
    """The records within the bounds (shared.kafka.read_range) as replay sources."""
    async for r in read_range(consumer, bounds):
        try:
            value = loads(r.value) if r.value is not None else None
        except ValueError:
            value = r.value
        yield Source(value, f"{r.topic}[{r.partition}]@{r.offset}", derived_event_id(r.topic, r.partition, r.offset))


async def replay(args: argparse.Namespace, settings: IngestSettings) -> int:
    spec = load_spec(settings.spec_path)
    validator = EventValidator(spec)
    topics = Topics(settings.topic_prefix)
    kind: Kind = "label" if args.labels else "event"
    target = topics[f"{kind}s"]
    limits = limits_of(settings)
    producer = None if args.dry_run else make_producer(settings.kafka)
    if producer is not None:
        await producer.start()
    progress: Progress | None = None
    errors: list[str] = []
    pending = []
    now = utcnow()

    async def handle(src: Source) -> None:
        try:
            out = to_outgoing(validator, raw_item(src, kind), kind, source="replay", now=now, limits=limits,
                              event_id=src.origin_id)
        except ValidationFailed as exc:
            progress.step(False)  # type: ignore[union-attr]
            if len(errors) < 20:
                errors.append(f"{src.origin}: {exc}")
            return
        if producer is not None:
            pending.append(await producer.send(target, out.value, key=out.key))
        progress.step(True)  # type: ignore[union-attr]

    try:
        if args.file:
            sources = list(read_file(Path(args.file)))
            progress = Progress(len(sources))
            for src in sources:
                await handle(src)
        else:
            start = parse_time(args.start) if args.start else None
            end = parse_time(args.end) if args.end else None
            consumer = make_consumer(settings.kafka, group_id=None)
            await consumer.start()
            try:
                bounds = await topic_range(consumer, topics[args.topic], start, end,
                                           args.from_offset, args.to_offset)
                progress = Progress(sum(hi - lo for lo, hi in bounds.values()))
                async for src in read_sources(consumer, bounds):
                    await handle(src)
            finally:
                await consumer.stop()
        if pending:
            await asyncio.gather(*pending)  # every replayed record acknowledged before we report it
    finally:
        if producer is not None:
            await producer.stop()
    assert progress is not None
    progress.show(end="\n")
    for line in errors:
        print(f"invalid: {line}", file=sys.stderr)
    verb = "would replay" if args.dry_run else f"replayed into {target}:"
    print(f"{verb} {progress.done - progress.bad} {kind}s; {progress.bad} invalid")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--topic", help="catalogue topic name, e.g. events, events.raw, events.dlq")
    src.add_argument("--file", help=".parquet, .csv, .ndjson, or a Parquet dataset folder")
    parser.add_argument("--start", help="topic range start (RFC 3339, by record timestamp)")
    parser.add_argument("--end", help="topic range end, exclusive (RFC 3339)")
    parser.add_argument("--from-offset", type=int, help="first offset, per partition")
    parser.add_argument("--to-offset", type=int, help="last offset (inclusive), per partition")
    parser.add_argument("--dry-run", action="store_true", help="validate and count, produce nothing")
    parser.add_argument("--labels", action="store_true",
                        help="replay labels into `labels` (each needs observed_at: it decides lateness)")
    args = parser.parse_args(argv)
    if args.file and any(v is not None for v in (args.start, args.end, args.from_offset, args.to_offset)):
        parser.error("--start/--end/--from-offset/--to-offset go with --topic")
    return asyncio.run(replay(args, IngestSettings()))


if __name__ == "__main__":
    raise SystemExit(main())
