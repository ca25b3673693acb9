"""`loopline explore`: read the offline store and the registry, write the exploration report (cli.report)."""
from __future__ import annotations

import asyncio
import os
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from cli.client import CliError
from cli.context import Context, ctx_of, err
from cli.report import ReportData, Version, render
from shared.serialization import parse_time
from shared.settings import KafkaSettings

REGISTRY_TIMEOUT_S = 30.0


class RegistrySource(str, Enum):
    kafka = "kafka"
    trainer = "trainer"
    none = "none"


def default_offline() -> str:
    """FEATURES_OFFLINE_URL, else the store of the deployment `loopline up` started, else var/offline."""
    if url := os.environ.get("FEATURES_OFFLINE_URL"):
        return url
    from deploy.local import read_state

    state = read_state()
    return state["offline"] if state else "var/offline"


async def versions_from_kafka(kafka: KafkaSettings, prefix: str) -> list[Version]:
    """Every version on the `models` topic (shared.registry.read_registry)."""
    from shared.registry import read_registry
    from shared.topics import Topics

    registry, _ = await asyncio.wait_for(read_registry(kafka, Topics(prefix)["models"]), REGISTRY_TIMEOUT_S)
    return [Version(v.name, v.version, v.stage, v.algorithm, v.evaluation, dict(v.metrics), v.trained_at,
                    v.lineage.data.start, v.lineage.data.end) for v in registry.versions()]


def versions_from_trainer(c: Context) -> list[Version]:
    """Every version the trainer's API lists (the champion's lineage from its detail)."""
    api = c.api("trainer")
    body = api.get("/v1/models")
    champion = body.get("champion") or {}
    out = []
    for v in body["versions"]:
        start = end = None
        if (v["name"], v["version"]) == (champion.get("name"), champion.get("version")):
            data = api.get(f"/v1/models/{v['name']}/{v['version']}")["lineage"]["data"]
            start, end = (parse_time(data["start"]) if data.get("start") else None,
                          parse_time(data["end"]) if data.get("end") else None)
        out.append(Version(v["name"], v["version"], v["stage"], v["algorithm"], v["evaluation"], v["metrics"],
                           parse_time(v["trained_at"]), start, end))
    return out


def explore(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--out", "-o", help="The HTML file to write")] = Path("exploration.html"),
    offline: Annotated[str | None, typer.Option(
        help="Offline store (path or file:// URL) (env FEATURES_OFFLINE_URL; default: the store of the deployment "
             "`loopline up` started, else var/offline)")] = None,
    registry: Annotated[RegistrySource, typer.Option(
        help="Where the model versions come from: the models topic (Kafka settings from KAFKA_*), the trainer's "
             "API, or none")] = RegistrySource.kafka,
    recent_share: Annotated[float, typer.Option(min=0.01, max=0.99, help=(
        "Without a champion's training window: the newest share of rows that counts as recent"))] = 0.2,
    split_at: Annotated[str | None, typer.Option(help="Recent = rows from this event time on (RFC 3339); overrides "
                                                      "the champion's window")] = None,
) -> None:
    """Write the exploration report: one self-contained HTML file (inline SVG plots) with per-input distributions
    (training window against recent), missing values, each input's relation to the label, the label over time,
    the monitor's drift statistics between the windows, and the model versions with their metrics over time."""
    from shared.offline import open_store
    from shared.spec import SpecError, load_spec

    c = ctx_of(ctx)
    try:
        spec = load_spec(c.settings.spec_path)
    except SpecError as exc:
        raise CliError(str(exc)) from None
    url = offline or default_offline()
    try:
        store = open_store(url, spec)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    cut = None
    if split_at is not None:
        try:
            cut = parse_time(split_at)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--split-at") from None
    err.print(f"reading the offline store {url}")
    examples = store.read("training_examples")
    counts = {"training examples": len(examples)}
    frame, labelled = examples, True
    if examples.empty:
        frame, labelled = store.read("snapshots"), False
        counts["snapshots"] = len(frame)
    if frame.empty:
        raise CliError(f"the offline store {url} holds no training examples or snapshots (is FEATURES_OFFLINE_URL "
                       f"the features service's, and has it flushed?)")
    versions, note = None, ""
    if registry == RegistrySource.kafka:
        try:
            versions = asyncio.run(versions_from_kafka(c.kafka(), c.prefix()))
            note = f"From the models topic ({len(versions)} versions; the trainer keeps the newest of each model)."
        except Exception as exc:  # the report is still useful without the registry
            note = f"The registry could not be read from Kafka ({c.kafka().bootstrap_servers}): {exc!r}"
            err.print(f"[yellow]warning:[/] {note}")
    elif registry == RegistrySource.trainer:
        versions = versions_from_trainer(c)
        note = f"From the trainer's API ({c.settings.url('trainer')})."
    else:
        note = "Not read (--registry none)."
    data = ReportData(spec, frame, labelled, url, counts, versions, note)
    err.print(f"writing the report on {len(frame):,} rows")
    out.write_text(render(data, recent_share=recent_share, split_at=cut), encoding="utf-8")
    typer.echo(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB)")
