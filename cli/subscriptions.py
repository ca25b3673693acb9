"""`loopline subscriptions`: the monitor's on-call webhooks (admin routes when the monitor has keys)."""
from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from cli.alerts import KINDS
from cli.context import console, ctx_of

app = typer.Typer(no_args_is_help=True, help="On-call webhook subscriptions of the monitor.")
ApiKey = Annotated[str | None, typer.Option(help="Admin API key (env LOOPLINE_API_KEY; or the global --api-key)")]
SEVERITIES = ("info", "warning", "critical")
TEMPLATES = ("standard", "slack", "pagerduty")


@app.command()
def add(ctx: typer.Context,
        url: Annotated[str, typer.Argument(help="Where alerts are POSTed (http or https)")],
        kind: Annotated[list[str] | None, typer.Option(help=f"Deliver only this kind (repeatable): {', '.join(KINDS)}")]
        = None,
        severity: Annotated[list[str] | None, typer.Option(help="Deliver only this severity (repeatable): "
                                                                 + ", ".join(SEVERITIES))] = None,
        model: Annotated[list[str] | None, typer.Option(help="Deliver only alerts of this model (repeatable)")] = None,
        template: Annotated[str, typer.Option(help=f"Payload shape: {', '.join(TEMPLATES)}")] = "standard",
        secret: Annotated[str | None, typer.Option(help="Signing secret 'whsec_…' (default: the monitor makes one "
                                                        "and shows it once)")] = None,
        api_key: ApiKey = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the monitor's answer as JSON")] = False) -> None:
    """Subscribe a webhook to alerts; prints its id and signing secret (shown this once)."""
    for name, values, allowed in (("--kind", kind, KINDS), ("--severity", severity, SEVERITIES),
                                  ("--template", [template], TEMPLATES)):
        for v in values or []:
            if v not in allowed:
                raise typer.BadParameter(f"{v!r} is not one of {', '.join(allowed)}", param_hint=name)
    body = {"url": url, "kinds": kind or [], "severities": severity or [], "models": model or [],
            "template": template}
    if secret is not None:
        body["secret"] = secret
    sub = ctx_of(ctx).api("monitor", api_key).post("/v1/subscriptions", json=body)
    if as_json:
        typer.echo(json.dumps(sub, indent=2))
        return
    console.print(f"subscription [bold]{sub['id']}[/] → {sub['url']} ({sub['template']})")
    console.print(f"signing secret (shown once): {sub['secret']}", markup=False)


@app.command("list")
def list_(ctx: typer.Context, api_key: ApiKey = None,
          as_json: Annotated[bool, typer.Option("--json", help="Print the monitor's answer as JSON")] = False) -> None:
    """Every subscription, without secrets."""
    subs = ctx_of(ctx).api("monitor", api_key).get("/v1/subscriptions")["subscriptions"]
    if as_json:
        typer.echo(json.dumps(subs, indent=2))
        return
    table = Table(title=f"{len(subs)} subscription(s)", title_justify="left")
    for col in ("id", "url", "kinds", "severities", "models", "template", "created", "state"):
        table.add_column(col)
    for s in subs:
        table.add_row(s["id"], s["url"], ",".join(s["kinds"]) or "all", ",".join(s["severities"]) or "all",
                      ",".join(s["models"]) or "all", s["template"], s["created_at"][:19],
                      f"disabled: {s.get('disabled_reason') or 'yes'}" if s.get("disabled") else "active")
    console.print(table)


@app.command()
def remove(ctx: typer.Context, subscription_id: Annotated[str, typer.Argument(help="The subscription's id")],
           api_key: ApiKey = None) -> None:
    """Remove a subscription (deliveries waiting for it are dropped)."""
    ctx_of(ctx).api("monitor", api_key).delete(f"/v1/subscriptions/{subscription_id}")
    console.print(f"removed {subscription_id}")
