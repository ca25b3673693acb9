"""`loopline replay`: feed events and labels through the pipeline again, from an NDJSON file or a range
of a topic, through ingest's HTTP API (validated there, answered per record) or straight to
`events.raw` / `labels.raw` (validated by ingest's raw bridge; rejects go to `events.dlq`).

Event ids are kept (a record without one gets an id derived from where it was read: the file and
line, or the topic, partition and offset), so a record replayed twice counts once downstream.
Labels must carry `observed_at`: a label without it counts as observed now and is dead-lettered as
late when its event is older than the spec's label.max_delay, so such rows are refused here.
"""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cli.client import CliError, detail, headers
from cli.config import CliSettings
from cli.context import Context, ctx_of, err
from shared.events import derived_event_id, input_of
from shared.serialization import dumps, loads, parse_time
from shared.settings import KafkaSettings
from shared.topics import CATALOGUE, Topics

RETRY_BUDGET_S = 120.0


class Via(str, Enum):
    http = "http"
    kafka = "kafka"


@dataclass
class Item:
    kind: str  # event | label
    value: Any
    origin: str


@dataclass
class Tally:
    sent: dict[str, int] = field(default_factory=lambda: {"event": 0, "label": 0})
    accepted: dict[str, int] = field(default_factory=lambda: {"event": 0, "label": 0})
    rejected: list[str] = field(default_factory=list)  # 'origin: reason', both ingest's and ours
    rejected_count: int = 0
    valid: int = 0  # records read that were not refused here

    def reject(self, origin: str, reason: str) -> None:
        self.rejected_count += 1
        if len(self.rejected) < 20:
            self.rejected.append(f"{origin}: {reason}")


def checked(item: Item, fallback_id: str, tally: Tally) -> Item | None:
    """The record in the shape a client sends, its event id kept (or derived); None if refused here."""
    value = input_of(item.value, item.kind)  # type: ignore[arg-type]
    if not isinstance(value, dict):
        tally.reject(item.origin, "not a JSON object")
        return None
    if item.kind == "event" and not value.get("event_id"):
        value = {**value, "event_id": fallback_id}
    if item.kind == "label" and not value.get("observed_at"):
        tally.reject(item.origin, "a replayed label needs observed_at (without it, it counts as observed now "
                                  "and is dead-lettered as late)")
        return None
    return Item(item.kind, value, item.origin)


def file_items(path: Path, labels: bool, tally: Tally) -> Iterator[Item]:
    """NDJSON lines: {"kind": "event"|"label", "body": {...}} (examples/fraud/generate.py --out), or bare
    records (events; labels with --labels)."""
    with path.open("rb") as f:
        for n, line in enumerate(f):
            if not line.strip():
                continue
            origin = f"{path}:{n + 1}"
            try:
                value = loads(line)
            except ValueError as exc:
                tally.reject(origin, f"not JSON: {exc}")
                continue
            kind = "label" if labels else "event"
            if isinstance(value, dict) and set(value) == {"kind", "body"} and value["kind"] in ("event", "label"):
                kind, value = value["kind"], value["body"]
            if (item := checked(Item(kind, value, origin), derived_event_id(str(path), 0, n), tally)) is not None:
                yield item


async def topic_items(kafka: KafkaSettings, topic: str, labels: bool, partitions: list[int] | None,
                      start: datetime | None, end: datetime | None, from_offset: int | None, to_offset: int | None,
                      tally: Tally, on_total: Any) -> AsyncIterator[Item]:
    """The records of a topic range (shared.kafka.topic_range), as items."""
    from shared.kafka import make_consumer, read_range, topic_range

    consumer = make_consumer(kafka, group_id=None)
    await consumer.start()
    try:
        bounds = await topic_range(consumer, topic, start, end, from_offset, to_offset, partitions)
        on_total(sum(hi - lo for lo, hi in bounds.values()))
        async for r in read_range(consumer, bounds):
            origin = f"{r.topic}[{r.partition}]@{r.offset}"
            try:
                value = loads(r.value) if r.value is not None else None
            except ValueError as exc:
                tally.reject(origin, f"not JSON: {exc}")
                continue
            item = checked(Item("label" if labels else "event", value, origin),
                           derived_event_id(r.topic, r.partition, r.offset), tally)
            if item is not None:
                yield item
    finally:
        await consumer.stop()


class HttpSink:
    """Posts batches to ingest (events before labels, so a label never overtakes its event); retries a
    503 after Retry-After with the same ids."""

    def __init__(self, settings: CliSettings, key: str | None, batch: int, tally: Tally):
        self.client = httpx.AsyncClient(base_url=settings.url("ingest"), timeout=max(30.0, settings.timeout_s),
                                        headers=headers(key))
        self.batch, self.tally = batch, tally
        self.buffers: dict[str, list[Item]] = {"event": [], "label": []}

    async def add(self, item: Item) -> None:
        self.buffers[item.kind].append(item)
        if len(self.buffers[item.kind]) >= self.batch:
            if item.kind == "label":
                await self._flush("event")
            await self._flush(item.kind)

    async def close(self) -> None:
        try:
            await self._flush("event")
            await self._flush("label")
        finally:
            await self.client.aclose()

    async def _flush(self, kind: str) -> None:
        items, self.buffers[kind] = self.buffers[kind], []
        if not items:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RETRY_BUDGET_S
        while True:
            try:
                r = await self.client.post(f"/v1/{kind}s", content=dumps([i.value for i in items]),
                                           headers={"Content-Type": "application/json"})
            except httpx.HTTPError as exc:
                raise CliError(f"cannot reach ingest at {self.client.base_url}: {exc}", 2) from None
            if r.status_code != 503:
                break
            wait = float(r.headers.get("Retry-After", "1") or 1)
            if loop.time() + wait > deadline:
                raise CliError(f"ingest kept answering 503 for {RETRY_BUDGET_S:.0f}s: {detail(r)}")
            await asyncio.sleep(wait)
        if r.status_code in (401, 403):
            raise CliError(f"ingest refused the key ({r.status_code}): {detail(r)} (--api-key or LOOPLINE_API_KEY)")
        if r.status_code not in (202, 207, 422):
            raise CliError(f"ingest answered {r.status_code}: {detail(r)}")
        body = r.json()
        self.tally.sent[kind] += len(items)
        self.tally.accepted[kind] += body.get("accepted", 0)
        for rej in body.get("rejected", []):
            origin = items[rej["index"]].origin if 0 <= rej.get("index", -1) < len(items) else "?"
            self.tally.reject(origin, f"{rej.get('field')} {rej.get('code')}: {rej.get('reason')}")


class KafkaSink:
    """Produces to `events.raw` / `labels.raw` (acks=all, idempotent); ingest's raw bridge validates."""

    def __init__(self, kafka: KafkaSettings, topics: Topics, tally: Tally):
        from shared.kafka import make_producer

        self.producer = make_producer(kafka)
        self.topics, self.tally = topics, tally
        self.pending: list[tuple[str, asyncio.Future]] = []

    async def start(self) -> None:
        await self.producer.start()

    async def add(self, item: Item) -> None:
        key = str(item.value.get("event_id") or "").encode() or None
        self.pending.append((item.kind, await self.producer.send(self.topics[f"{item.kind}s.raw"],
                                                                  dumps(item.value), key=key)))
        self.tally.sent[item.kind] += 1
        if len(self.pending) >= 5000:
            await self._settle()

    async def _settle(self) -> None:
        pending, self.pending = self.pending, []
        for kind, future in pending:
            await future
            self.tally.accepted[kind] += 1

    async def close(self) -> None:
        try:
            await self._settle()
        finally:
            await self.producer.stop()


async def run(c: Context, *, file: Path | None, topic: str | None, labels: bool, partitions: list[int] | None,
              start: datetime | None, end: datetime | None, from_offset: int | None, to_offset: int | None,
              via: Via, batch: int, dry_run: bool, key: str | None, progress: Progress) -> Tally:
    tally = Tally()
    topics = Topics(c.prefix())
    task = progress.add_task("replay", total=None)
    sink: HttpSink | KafkaSink | None = None
    if not dry_run:
        sink = HttpSink(c.settings, key, batch, tally) if via == Via.http else KafkaSink(c.kafka(), topics, tally)
        if isinstance(sink, KafkaSink):
            await sink.start()
    try:
        if file is not None:
            with file.open("rb") as f:
                progress.update(task, total=sum(1 for line in f if line.strip()))
            source: Any = file_items(file, labels, tally)
            for item in source:
                tally.valid += 1
                if sink is not None:
                    await sink.add(item)
                progress.advance(task)
        else:
            assert topic is not None
            kind_labels = labels or topic.startswith("labels")
            async for item in topic_items(c.kafka(), topics[topic], kind_labels, partitions, start, end,
                                          from_offset, to_offset, tally,
                                          lambda total: progress.update(task, total=total)):
                tally.valid += 1
                if sink is not None:
                    await sink.add(item)
                progress.advance(task)
    finally:
        if sink is not None:
            await sink.close()
    progress.update(task, completed=progress.tasks[0].total or progress.tasks[0].completed)
    return tally


def replay(
    ctx: typer.Context,
    file: Annotated[Path | None, typer.Argument(
        help="NDJSON file: {kind, body} lines as examples/fraud/generate.py --out writes, or bare events "
             "(labels with --labels)", exists=True, dir_okay=False)] = None,
    topic: Annotated[str | None, typer.Option(help="Replay a range of this catalogue topic instead (events, "
                                                   "events.raw, events.dlq, labels, labels.raw)")] = None,
    partition: Annotated[list[int] | None, typer.Option(help="Only this partition of --topic (repeatable)")] = None,
    from_offset: Annotated[int | None, typer.Option(help="First offset, per partition")] = None,
    to_offset: Annotated[int | None, typer.Option(help="Last offset (inclusive), per partition")] = None,
    start: Annotated[str | None, typer.Option(help="Range start by record timestamp (RFC 3339)")] = None,
    end: Annotated[str | None, typer.Option(help="Range end, exclusive (RFC 3339)")] = None,
    labels: Annotated[bool, typer.Option(help="The records are labels ({event_id, value, observed_at}); "
                                              "implied by a labels topic")] = False,
    via: Annotated[Via, typer.Option(help="http: through ingest's API (rejects listed here); kafka: produced to "
                                          "events.raw / labels.raw (rejects go to events.dlq)")] = Via.http,
    batch: Annotated[int, typer.Option(min=1, max=10_000, help="Records per HTTP request")] = 500,
    dry_run: Annotated[bool, typer.Option(help="Read and check the records, send nothing")] = False,
    api_key: Annotated[str | None, typer.Option(help="Ingest API key (env LOOPLINE_API_KEY)")] = None,
) -> None:
    """Feed events and labels through the pipeline again from a file or a topic range, with progress.
    Exit status 1 if any record was rejected."""
    c = ctx_of(ctx)
    if (file is None) == (topic is None):
        raise typer.BadParameter("give a FILE or --topic, not both", param_hint="FILE / --topic")
    if file is not None and any(v is not None for v in (partition, from_offset, to_offset, start, end)):
        raise typer.BadParameter("--partition/--from-offset/--to-offset/--start/--end go with --topic")
    if topic is not None and (topic not in CATALOGUE or CATALOGUE[topic].pattern):
        raise typer.BadParameter(f"{topic!r} is not a catalogue topic", param_hint="--topic")
    try:
        start_t, end_t = (parse_time(start) if start else None), (parse_time(end) if end else None)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--start/--end") from None
    key = api_key if api_key is not None else c.settings.key()
    columns = (TextColumn("[bold]replay[/]"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=False) as progress:
        tally = asyncio.run(run(c, file=file, topic=topic, labels=labels, partitions=partition, start=start_t,
                                end=end_t, from_offset=from_offset, to_offset=to_offset, via=via, batch=batch,
                                dry_run=dry_run, key=key, progress=progress))
    for line in tally.rejected:
        err.print(f"rejected {line}", markup=False, highlight=False)
    if tally.rejected_count > len(tally.rejected):
        err.print(f"... and {tally.rejected_count - len(tally.rejected)} more")
    if dry_run:
        typer.echo(f"would replay {tally.valid} records; "
                   f"{tally.rejected_count} refused")
    else:
        where = (f"through ingest ({c.settings.url('ingest')})" if via == Via.http
                 else f"to {Topics(c.prefix())['events.raw']} / labels.raw (ingest's raw bridge validates them)")
        typer.echo(f"replayed {where}: {tally.accepted['event']} events and {tally.accepted['label']} labels "
                   f"accepted, {tally.rejected_count} rejected")
    raise typer.Exit(1 if tally.rejected_count else 0)
