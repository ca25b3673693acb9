"""`loopline alerts`: what the monitor has firing."""
from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from cli.context import console, ctx_of

app = typer.Typer(no_args_is_help=True, help="Alerts from the monitor.")
KINDS = ("data_drift", "prediction_drift", "concept_drift", "performance", "bias", "skew")


@app.command("list")
def list_(ctx: typer.Context,
          kind: Annotated[str | None, typer.Option(help=f"Only this kind: {', '.join(KINDS)}")] = None,
          as_json: Annotated[bool, typer.Option("--json", help="Print the monitor's answer as JSON")] = False) -> None:
    """The alerts firing now (resolved ones are on the `alerts` topic), oldest first."""
    if kind is not None and kind not in KINDS:
        raise typer.BadParameter(f"one of {', '.join(KINDS)}", param_hint="--kind")
    firing = ctx_of(ctx).api("monitor").get("/v1/alerts", params={"kind": kind} if kind else None)["firing"]
    if as_json:
        typer.echo(json.dumps(firing, indent=2))
        return
    if not firing:
        console.print("no alerts firing")
        return
    table = Table(title=f"{len(firing)} alert(s) firing", title_justify="left")
    for col in ("kind", "subject", "statistic", "value", "threshold", "severity", "model", "windows", "since"):
        table.add_column(col)
    for a in firing:
        model = f"{a['model_name']} v{a['model_version']}" if a.get("model_name") else "–"
        table.add_row(a["kind"], a["subject"], a["statistic"], f"{a['value']:.4g}", f"{a['threshold']:.4g}",
                      a["severity"], model, str((a.get("details") or {}).get("windows", 1)), a["started_at"])
    console.print(table)
