"""`loopline status`: per service up (/healthz), ready (/readyz) and consumer lag; the champion with its
holdout and live metric; the alerts firing. As a table, as JSON, or served over HTTP (GET /status)."""
from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Annotated, Any

import httpx
import typer
from prometheus_client.parser import text_string_to_metric_families
from rich.table import Table

from cli.client import headers
from cli.config import SERVICES, CliSettings
from cli.context import console, ctx_of

INGEST_LAG = "loopline_ingest_bridge_lag_records"


async def _get(client: httpx.AsyncClient, url: str) -> httpx.Response | str:
    """The answer, or why there is none (an answer of any status counts: /readyz says 503 with a body)."""
    try:
        return await client.get(url)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}".rstrip(": ")


def _json(r: httpx.Response | str) -> Any:
    if isinstance(r, str):
        return None
    try:
        return r.json()
    except ValueError:
        return None


async def service_status(client: httpx.AsyncClient, name: str, base: str) -> dict[str, Any]:
    """up: /healthz answers 200; ready: /readyz answers 200; lag: records its consumers have not processed
    (stream services: /readyz `lag`; serving: its feature-state replica's; ingest: the raw bridge's, from
    /metrics)."""
    health, ready = await asyncio.gather(_get(client, f"{base}/healthz"), _get(client, f"{base}/readyz"))
    out: dict[str, Any] = {"name": name, "url": base, "up": not isinstance(health, str) and health.status_code == 200,
                           "ready": None, "lag": None, "problems": {}}
    if isinstance(health, str):
        out["error"] = health
        return out
    body = _json(ready)
    if isinstance(body, dict):
        out["ready"] = bool(body.get("ready")) and ready.status_code == 200  # type: ignore[union-attr]
        out["problems"] = body.get("problems") or {
            check: "failing" for check, ok in (body.get("checks") or {}).items() if not ok}
        lag = body.get("lag", body.get("replica_lag_records"))
        out["lag"] = int(lag) if isinstance(lag, (int, float)) and lag >= 0 else None
    if name == "ingest":
        metrics = await _get(client, f"{base}/metrics")
        if not isinstance(metrics, str) and metrics.status_code == 200:
            for family in text_string_to_metric_families(metrics.text):
                for sample in family.samples:
                    if sample.name == INGEST_LAG:
                        out["lag"] = int(sample.value)
    return out


async def collect(settings: CliSettings) -> dict[str, Any]:
    """Everything `status` shows, as JSON-ready data; `ok` when every service is up and ready."""
    async with httpx.AsyncClient(timeout=settings.timeout_s, headers=headers(settings.key())) as client:
        services = await asyncio.gather(*(service_status(client, n, settings.url(n)) for n in SERVICES))
        models, performance, alerts = await asyncio.gather(
            _get(client, f"{settings.url('trainer')}/v1/models"),
            _get(client, f"{settings.url('monitor')}/v1/performance"),
            _get(client, f"{settings.url('monitor')}/v1/alerts"))
    champion = None
    registry = _json(models) if not isinstance(models, str) and models.status_code == 200 else None
    if registry and registry.get("champion"):
        name, version = registry["champion"]["name"], registry["champion"]["version"]
        record = next((v for v in registry["versions"] if v["name"] == name and v["version"] == version), {})
        champion = {"name": name, "version": version, "algorithm": record.get("algorithm"),
                    "evaluation": record.get("evaluation"), "metrics": record.get("metrics") or {},
                    "primary": None, "live": None, "labelled": 0}
    perf = _json(performance) if not isinstance(performance, str) and performance.status_code == 200 else None
    if champion and perf:
        champion["primary"] = perf.get("primary")
        for row in perf.get("versions") or []:
            if (row["model"], row["version"], row["variant"]) == (champion["name"], champion["version"], "champion"):
                champion["live"] = (row.get("metrics") or {}).get(perf.get("primary"))
                champion["labelled"] = row.get("labelled", 0)
    firing = _json(alerts) if not isinstance(alerts, str) and alerts.status_code == 200 else None
    return {"checked_at": datetime.now(UTC).isoformat(), "ok": all(s["up"] and s["ready"] for s in services),
            "services": services, "champion": champion,
            "alerts": None if firing is None else firing.get("firing", []),
            "trainer_reachable": registry is not None, "monitor_reachable": firing is not None}


def _fmt(value: Any) -> str:
    return "–" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def render(state: dict[str, Any]) -> None:
    table = Table(title="Services", title_justify="left")
    for col in ("service", "url", "up", "ready", "lag", "problems"):
        table.add_column(col, justify="right" if col == "lag" else "left")
    for s in state["services"]:
        yes = lambda v: "–" if v is None else ("[green]yes[/]" if v else "[red]no[/]")  # noqa: E731
        problems = s.get("error") or "; ".join(f"{k}: {v}" for k, v in (s["problems"] or {}).items())
        table.add_row(s["name"], s["url"], yes(s["up"]), yes(s["ready"] if s["up"] else None), _fmt(s["lag"]),
                      problems[:120])
    console.print(table)
    c = state["champion"]
    if c:
        primary = c["primary"]
        holdout = c["metrics"].get(primary) if primary else None
        live = f"{_fmt(c['live'])} over {c['labelled']} labelled predictions" if c["live"] is not None else \
            f"not yet ({c['labelled']} labelled predictions)"
        console.print(f"champion: [bold]{c['name']} v{c['version']}[/] ({c['algorithm']}); "
                      f"{primary or 'primary metric'} {c['evaluation']} {_fmt(holdout)}, live {live}")
    else:
        console.print("champion: none" + ("" if state["trainer_reachable"] else " (trainer unreachable)"))
    alerts = state["alerts"]
    if alerts is None:
        console.print("alerts: monitor unreachable")
    elif not alerts:
        console.print("alerts: none firing")
    else:
        table = Table(title=f"{len(alerts)} alert(s) firing", title_justify="left")
        for col in ("kind", "subject", "statistic", "value", "threshold", "severity", "since"):
            table.add_column(col)
        for a in alerts:
            table.add_row(a["kind"], a["subject"], a["statistic"], _fmt(a["value"]), _fmt(a["threshold"]),
                          a["severity"], a["started_at"])
        console.print(table)


def status_app(settings: CliSettings) -> Any:
    """A FastAPI app serving GET /status (the JSON of `status --json`; 503 when a service is down or
    not ready, so a load balancer or probe can use it) and GET /healthz."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    http = FastAPI(title="Loopline status", version="1",
                   description="The deployment's status as `loopline status --json` shows it")

    @http.get("/status", summary="Per service up, ready and lag; the champion and its live metric; firing alerts")
    async def get_status() -> JSONResponse:
        state = await collect(settings)
        return JSONResponse(state, status_code=200 if state["ok"] else 503)

    @http.get("/healthz", summary="The status server is alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return http


def status(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print the status as JSON")] = False,
    serve: Annotated[int | None, typer.Option(help="Serve GET /status (JSON) on this port until Ctrl-C")] = None,
    host: Annotated[str, typer.Option(help="Address --serve listens on")] = "127.0.0.1",
) -> None:
    """Per service: up (/healthz), ready (/readyz) and consumer lag; the champion with its holdout and live
    metric (monitor /v1/performance); the alerts firing. Exit status 1 when a service is down or not ready."""
    settings = ctx_of(ctx).settings
    if serve is not None:
        import uvicorn

        console.print(f"serving the status on http://{host}:{serve}/status")
        uvicorn.run(status_app(settings), host=host, port=serve, log_level="warning")
        return
    state = asyncio.run(collect(settings))
    if as_json:
        typer.echo(json.dumps(state, indent=2))
    else:
        render(state)
    raise typer.Exit(0 if state["ok"] else 1)

