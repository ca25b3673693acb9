"""`loopline models`: the registry through the trainer's HTTP API (list, show; promote and rollback
need an admin key when the trainer has keys)."""
from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from cli.context import console, ctx_of

app = typer.Typer(no_args_is_help=True, help="Model versions in the registry (the trainer's HTTP API).")

ApiKey = Annotated[str | None, typer.Option(help="Admin API key (env LOOPLINE_API_KEY; or the global --api-key)")]
AsJson = Annotated[bool, typer.Option("--json", help="Print the trainer's answer as JSON")]


def _metrics(metrics: dict[str, float], first: str | None = None) -> str:
    names = sorted(metrics, key=lambda k: (k != first, k))
    return ", ".join(f"{k} {v + 0.0:.4f}" for k, v in ((k, metrics[k]) for k in names))  # + 0.0: no "-0.0000"


@app.command("list")
def list_(ctx: typer.Context, name: Annotated[str | None, typer.Option(help="Only this model name")] = None,
          as_json: AsJson = False) -> None:
    """Every version: stage, algorithm, how it was evaluated and its metrics (the champion marked *)."""
    body = ctx_of(ctx).api("trainer").get("/v1/models")
    versions = [v for v in body["versions"] if name is None or v["name"] == name]
    if as_json:
        typer.echo(json.dumps({**body, "versions": versions}, indent=2))
        return
    champion = body.get("champion") or {}
    table = Table(title=f"{len(versions)} model version(s)", title_justify="left")
    for col in ("", "name", "version", "stage", "library", "algorithm", "evaluation", "trained", "metrics"):
        table.add_column(col)
    for v in versions:
        mark = "*" if (v["name"], v["version"]) == (champion.get("name"), champion.get("version")) else ""
        table.add_row(mark, v["name"], str(v["version"]), v["stage"], v["library"], v["algorithm"], v["evaluation"],
                      str(v["trained_at"])[:19], _metrics(v["metrics"]))
    console.print(table)
    if champion:
        console.print(f"champion: {champion['name']} v{champion['version']}")


@app.command()
def show(ctx: typer.Context, name: Annotated[str, typer.Argument(help="Model name (the spec's models[].name)")],
         version: Annotated[int, typer.Argument(help="Version number")], as_json: AsJson = False) -> None:
    """One version: metrics, lineage (training data, code and package versions) and the reference statistics'
    summary."""
    v: dict[str, Any] = ctx_of(ctx).api("trainer").get(f"/v1/models/{name}/{version}")
    if as_json:
        typer.echo(json.dumps(v, indent=2))
        return
    lineage, data = v.get("lineage") or {}, (v.get("lineage") or {}).get("data") or {}
    reference = v.get("reference") or {}
    rows = [("stage", v["stage"]), ("reason", v.get("reason") or "–"),
            ("model", f"{v['library']} {v['algorithm']} ({v['task']})"),
            ("metrics", f"{v['evaluation']}: {_metrics(v['metrics'])}"),
            ("trained at", str(v["trained_at"])), ("updated at", str(v["updated_at"])),
            ("training data", f"{data.get('examples', 0)} examples, event time {data.get('start') or '?'} .. "
                              f"{data.get('end') or '?'}"),
            ("inputs", f"{len(v.get('inputs') or [])} columns"),
            ("reference", f"{len(reference.get('features') or {})} inputs described, {reference.get('rows', 0)} rows"),
            ("params", json.dumps(v.get("params") or {})),
            ("code", f"{lineage.get('code_version')}; " + ", ".join(
                f"{k} {val}" for k, val in (lineage.get("packages") or {}).items())),
            ("artifact", f"{v['artifact_uri']} (sha256 {v['sha256'][:12]}…, "
                         f"{'signed' if v.get('signature') else 'unsigned'})")]
    table = Table(title=f"{v['name']} v{v['version']}", title_justify="left", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for k, val in rows:
        table.add_row(k, val)
    console.print(table)


@app.command()
def promote(ctx: typer.Context, name: Annotated[str, typer.Argument(help="Model name")],
            version: Annotated[int, typer.Argument(help="Version to make the champion")],
            api_key: ApiKey = None) -> None:
    """Make this version the champion (the current one is archived; serving swaps to it)."""
    v = ctx_of(ctx).api("trainer", api_key).post(f"/v1/models/{name}/{version}/promote")
    console.print(f"{v['name']} v{v['version']} is now {v['stage']}")


@app.command()
def rollback(ctx: typer.Context, api_key: ApiKey = None) -> None:
    """Make the previous champion the champion again."""
    body = ctx_of(ctx).api("trainer", api_key).post("/v1/rollback")
    c = body.get("champion")
    console.print(f"champion: {c['name']} v{c['version']}" if c else "no champion")
