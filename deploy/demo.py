"""`make demo`: Kafka, the five services as processes, and the fraud example's closed loop shown in
the terminal (examples/fraud/loop.py drives the traffic): events ingested, features computed, the
first champion trained and served, the drift, the alert delivered to a local webhook receiver
(signature checked), the retrain, the new champion swapped in, the alert resolved.

    python -m deploy.demo [--fresh] [--keep] [--pace N] [--after N]

State lives in .run/ (the services' data, logs in .run/logs/, the run's progress in .run/demo.json)
and in the local Kafka's topics (prefix `demo<N>.`). Ctrl-C stops everything cleanly; running the
demo again resumes where it stopped, `--fresh` starts over (new topics, empty .run/).
"""
from __future__ import annotations

import argparse
import base64
import os
import secrets
import shutil
import sys
import time
from dataclasses import asdict
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from deploy.local import RUN, kafka_running, local_bootstrap, read_json, start_kafka, start_services, stop_kafka, \
    stop_services, write_json
from deploy.procs import ServiceProcess
from shared.metrics import metric_samples, metric_value
from examples.fraud.loop import DRIFT_KINDS, LoopConfig, LoopRun, Moment, Urls, WebhookReceiver, loop_spec, served_metric

STATE = RUN / "demo.json"
RECEIVER_PORT = 8009
STYLE = {"phase": "bold cyan", "champion": "bold green", "rejected": "yellow", "swap": "green", "alert": "bold red",
         "resolved": "bold green", "metric": "yellow", "webhook": "magenta"}


def fresh_state(args: argparse.Namespace) -> dict[str, Any]:
    config = LoopConfig(pace=args.pace, after=args.after)
    return {"prefix": f"demo{int(time.time())}.", "config": asdict(config), "position": 0,
            "secret": "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode(), "subscribed": False}


def reset_run_dir() -> None:
    """Remove the services' data and the demo's state (the topics of the old prefix stay in Kafka)."""
    for name in ("features", "trainer", "serving", "monitor", "offline", "artifacts", "demo.json", "loop-spec.yaml"):
        path = RUN / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fresh", action="store_true", help="start from scratch instead of resuming")
    parser.add_argument("--keep", action="store_true", help="keep everything running at the end until Ctrl-C")
    parser.add_argument("--pace", type=float, default=LoopConfig.pace, help="live requests per second")
    parser.add_argument("--after", type=int, default=LoopConfig.after, help="live events after the drift")
    args = parser.parse_args()
    console = Console(highlight=False)

    state = None if args.fresh else read_json(STATE)
    if state is not None and state.get("finished"):
        console.print(f"the run in {STATE} finished; starting a fresh one")
        state = None
    if state is None:
        reset_run_dir()
        state = fresh_state(args)
        write_json(STATE, state)
    else:
        console.print(f"[bold]resuming[/] the run in {STATE} (topics '{state['prefix']}'); "
                      "`make demo DEMO_ARGS=--fresh` starts over")
    config = LoopConfig(**state["config"])
    spec_path = RUN / "loop-spec.yaml"
    spec_path.write_text(loop_spec(config))

    kafka_was_up = kafka_running()
    console.print("Kafka already running" if kafka_was_up else "starting Kafka (deploy/kafka/kafka.sh)")
    start_kafka()
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": local_bootstrap(), "LOOPLINE_TOPIC_PREFIX": state["prefix"],
           "LOOPLINE_SPEC_PATH": str(spec_path), "MONITOR_WEBHOOK_ALLOW": '["127.0.0.1"]'}
    procs: list[ServiceProcess] = []
    receiver: WebhookReceiver | None = None
    run: LoopRun | None = None
    try:
        with console.status("starting the services") as status:
            procs = start_services(env, detach=True, report=lambda msg: status.update(msg))
        urls = Urls(*(p.url for p in procs))  # in the order of services(): ingest, features, trainer, serving, monitor
        console.print(f"services up: {', '.join(f'{p.module.split(chr(46))[-1]} {p.url}' for p in procs)}; "
                      f"logs in {RUN / 'logs'}; spec {spec_path}")

        def webhook(alert: dict[str, Any]) -> None:
            if alert["kind"] in DRIFT_KINDS:
                console.print(f"[magenta]   webhook receiver: {alert['status']} {alert['kind']} alert on "
                              f"{alert['subject']} ({alert['statistic']} {alert['value']:.3f}), signature verified[/]")

        receiver = WebhookReceiver(state["secret"], port=RECEIVER_PORT, on_alert=webhook)

        def show(m: Moment) -> None:
            if m.kind in ("alert", "resolved") and m.data["alert"]["kind"] not in DRIFT_KINDS:
                return
            console.print(f"[dim]{m.at_s:7.1f}s  live {m.live_sent:>6}[/]  [{STYLE.get(m.kind, '')}]{m.text}[/]")

        run = LoopRun(config, urls, on_moment=show, log=lambda msg: None)
        if not state["subscribed"]:
            sub = run.subscribe(receiver.url, state["secret"], kinds=list(DRIFT_KINDS))
            state["subscribed"] = True
            write_json(STATE, state)
            console.print(f"subscribed the webhook receiver {receiver.url} to drift alerts ({sub['id']})")
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, transient=False) as progress:
            tasks = {"ingest": progress.add_task("warm-up and history through ingest", total=config.live_from),
                     "live": progress.add_task("live events scored by serving", total=config.before + config.after),
                     "status": progress.add_task("", total=None)}

            def step(phase: str, done: int, total: int) -> None:
                progress.update(tasks["ingest" if phase in ("warm-up", "history") else "live"], completed=done)
                progress.update(tasks["status"], description=run.status())
                state["position"] = run.position
                if done % 1000 == 0:
                    write_json(STATE, state)

            run.run(resume_from=state["position"], progress=step, until=LoopRun.closed)
            progress.update(tasks["live"], total=run.live_sent, completed=run.live_sent)  # it may stop early
        state["position"], state["finished"] = run.position, True
        write_json(STATE, state)
        if not run.closed():
            with console.status("waiting for the drift alerts to resolve"):
                run.settle(120, LoopRun.closed)
        report(console, run, receiver)
        if args.keep:
            console.print("running; Ctrl-C stops everything")
            while all(p.running for p in procs):
                time.sleep(1)
        return 0
    except KeyboardInterrupt:
        console.print("\n[bold]interrupted[/]: stopping; `make demo` resumes from here")
        return 130
    finally:
        if run is not None:
            run.stop()
            state["position"] = run.position
            write_json(STATE, state)
        if receiver is not None:
            receiver.close()
        with console.status("stopping the services"):
            stop_services(procs)
        if not kafka_was_up:
            stop_kafka()
        console.print("stopped")


def report(console: Console, run: LoopRun, receiver: WebhookReceiver) -> None:
    """What the run showed, as a table."""
    cfg = run.config
    table = Table(title="the loop, measured on the served predictions (labels from the stream)")
    for col in ("stretch", "model", "requests", "ROC AUC"):
        table.add_column(col)
    for stretch, model, rows in served_metric(run):
        table.add_row(stretch, model, str(rows[0]), f"{rows[1]:.3f}")
    console.print(table)
    fired = [a for a in receiver.alerts if a["status"] == "firing" and a["kind"] in DRIFT_KINDS]
    resolved = [a for a in receiver.alerts if a["status"] == "resolved" and a["kind"] in DRIFT_KINDS]
    failed = sum(1 for s in run.served if s.status != 200)
    behind = sum(1 for s in run.served if s.replica_lag > 0) / max(1, len(run.served))
    text = httpx.get(f"{run.urls.monitor}/metrics", timeout=5).text
    compared = metric_value(text, "loopline_monitor_skew_compared_total") or 0
    differing = sum(v for k, v in metric_samples(text, "loopline_monitor_skew_mismatches_total"))
    console.print(f"champions in order: {' → '.join(run.champions)}; {len(run.served)} live requests, {failed} failed, "
                  f"{behind:.1%} answered while serving's replica of the feature state was behind; "
                  f"monitor: {compared:.0f} served vectors compared with the worker's snapshots, "
                  f"{differing:.0f} feature values differed; webhook: {len(fired)} drift alerts fired and {len(resolved)} resolved, signatures verified "
                  f"({receiver.refused} refused); the loop {'closed' if run.closed() else 'did not close'}; "
                  f"still firing: {len(run.drift_firing())}; drift at live event {cfg.before}")


if __name__ == "__main__":
    sys.exit(main())
