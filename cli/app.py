"""The `loopline` command: the root, its global options (where the deployment is) and the small
commands; each larger group lives in its own module."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from cli import alerts, explore, models, replay, status, subscriptions
from cli.config import CliSettings
from cli.context import Context, ctx_of, err

app = typer.Typer(name="loopline", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Operate a Loopline deployment: run it locally, check it, replay data, manage models and "
                       "alert subscriptions, explore the offline store.\n\nService URLs default to the local "
                       "ports (LOOPLINE_INGEST_URL, LOOPLINE_TRAINER_URL, ... override them); Kafka comes from "
                       "KAFKA_BOOTSTRAP_SERVERS and the other KAFKA_* settings.")

spec_app = typer.Typer(no_args_is_help=True, help="Pipeline spec tools.")
app.add_typer(spec_app, name="spec")
app.add_typer(models.app, name="models")
app.add_typer(alerts.app, name="alerts")
app.add_typer(subscriptions.app, name="subscriptions")
app.command("status")(status.status)
app.command("replay")(replay.replay)
app.command("explore")(explore.explore)


@app.callback()
def root(
    ctx: typer.Context,
    ingest_url: Annotated[str | None, typer.Option(help="Ingest base URL (env LOOPLINE_INGEST_URL)")] = None,
    features_url: Annotated[str | None, typer.Option(help="Feature worker base URL (env LOOPLINE_FEATURES_URL)")] = None,
    trainer_url: Annotated[str | None, typer.Option(help="Trainer base URL (env LOOPLINE_TRAINER_URL)")] = None,
    serving_url: Annotated[str | None, typer.Option(help="Serving base URL (env LOOPLINE_SERVING_URL)")] = None,
    monitor_url: Annotated[str | None, typer.Option(help="Monitor base URL (env LOOPLINE_MONITOR_URL)")] = None,
    api_key: Annotated[str | None, typer.Option(help="API key for admin routes (env LOOPLINE_API_KEY)")] = None,
    prefix: Annotated[str | None, typer.Option(
        help="Topic prefix of the deployment (env LOOPLINE_TOPIC_PREFIX; default: the one `loopline up` "
             "recorded)")] = None,
    spec: Annotated[Path | None, typer.Option(help="Pipeline spec (env LOOPLINE_SPEC_PATH)")] = None,
    timeout: Annotated[float | None, typer.Option(help="HTTP timeout in seconds (env LOOPLINE_TIMEOUT_S)")] = None,
) -> None:
    """Operate a Loopline deployment."""
    if isinstance(ctx.obj, Context):  # tests pass their own
        return
    overrides = {k: v for k, v in {"ingest_url": ingest_url, "features_url": features_url,
                                   "trainer_url": trainer_url, "serving_url": serving_url,
                                   "monitor_url": monitor_url, "api_key": api_key, "topic_prefix": prefix,
                                   "spec_path": spec, "timeout_s": timeout}.items() if v is not None}
    ctx.obj = Context(CliSettings(**overrides))


@app.command()
def up(
    ctx: typer.Context,
    prefix: Annotated[str | None, typer.Option(help="Topic prefix for this deployment (default: --prefix / "
                                                    "LOOPLINE_TOPIC_PREFIX, else none)")] = None,
    kafka: Annotated[bool, typer.Option(help="Start the local Kafka broker; --no-kafka uses the cluster "
                                             "KAFKA_BOOTSTRAP_SERVERS names")] = True,
) -> None:
    """Start the local deployment: Kafka and the five services as background processes (logs in .run/logs/,
    offline store in .run/offline/). `loopline down` stops them."""
    from deploy.local import up as start

    c = ctx_of(ctx)
    chosen = prefix if prefix is not None else (c.settings.topic_prefix or "")
    started = time.monotonic()
    state = start(chosen, kafka=kafka, report=lambda m: err.print(f"[dim]up:[/] {m}"))
    err.print(f"[green]up[/] in {time.monotonic() - started:.0f}s: Kafka {state['bootstrap']}, topic prefix "
              f"'{state['prefix']}', services " + ", ".join(f"{n} :{s['port']}" for n, s in state["services"].items()))
    err.print("`loopline status` shows how they do; `loopline down` stops them")


@app.command()
def down(
    keep_kafka: Annotated[bool, typer.Option(help="Leave the local Kafka broker running")] = False,
) -> None:
    """Stop what `loopline up` started (services first, then Kafka if up started it)."""
    from deploy.local import down as stop

    stopped = stop(keep_kafka=keep_kafka, report=lambda m: err.print(f"[dim]down:[/] {m}"))
    err.print(f"stopped {len(stopped)} service(s)")


@spec_app.command("check")
def spec_check(files: Annotated[list[Path], typer.Argument(help="Spec files to check")]) -> None:
    """Validate pipeline specs: 'ok' or every error with its YAML path and line; exit status 1 if any has one."""
    from shared.spec import main as spec_main

    raise typer.Exit(spec_main(["check", *map(str, files)]))


def main() -> None:
    """The `loopline` entry point. Errors an operator can act on are one line (exit status 1, or 2 when a
    service cannot be reached): CliError is a click exception."""
    app()
