"""Figure 3, freshness: ingest acknowledgement (HTTP 202) -> snapshot on `features`, at a steady rate
through `python -m services.ingest`, in rounds of a worker run and a bare-loop run; and its report."""
from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import time
from collections import Counter
from typing import Any

import orjson
from aiokafka import TopicPartition

from bench.common import CpuMeter, OffsetWatcher, broker_pid, median, table, unique_prefix
from bench.features.bare_loop import bare_loop_main
from bench.features.data import SPEC_PATH
from bench.features.harness import Harness, fetch_metrics, log, metric_sum, spawn, stop_process
from bench.features.http_load import HttpPool
from deploy.free_ports import free_port
from deploy.procs import ServiceProcess
from examples.fraud.generate import GeneratorConfig, generate
from shared.kafka import ensure_topics, make_consumer
from shared.settings import KafkaSettings
from shared.topics import Topics

GOAL_P99_MS = 50.0


async def measure(h: Harness) -> list[dict]:
    """The freshness runs of the options: a warm-up run, rounds of worker and bare loop, lower rates
    while the worker did not keep up."""
    a = h.args
    fresh: list[dict] = []
    log(f"\n-- freshness: {a.batch} events per POST, {a.duration:.0f} s at {a.rate:,.0f}/s, "
        f"{a.freshness_rounds} round(s)")
    if a.freshness_warmup > 0:
        # The broker's JIT: whichever run came first on a fresh broker paid for it (measured: the
        # bare loop's p50 33 ms first vs 9 ms after the worker's run; broker 1.0 vs 0.4 cores).
        # Through the worker: its requests are a superset of the bare loop's (more topics).
        log(f"  broker warm-up: {a.freshness_warmup:.0f} s of the same load through the worker, not reported")
        await one_run(h, a.rate, a.freshness_warmup, warm_s=0.0)
    for round_no in range(1, a.freshness_rounds + 1):
        # the order alternates, so neither run always goes first
        order = [False, True] if round_no % 2 else [True, False]
        for bare in order:
            if bare and a.no_bare_freshness:
                continue
            fresh.append(await one_run(h, a.rate, a.duration, bare=bare) | {"round": round_no})
    worker_runs = [r for r in fresh if r["run"] == "worker"]
    for lower in a.fallback_rates:
        if any(r["sustained"] for r in worker_runs) or lower >= worker_runs[-1]["rate_target"]:
            break
        log(f"    not sustained at {worker_runs[-1]['rate_target']:,.0f}/s; "
            f"measuring at {lower:,.0f}/s as well")
        worker_runs.append(await one_run(h, lower, a.duration) | {"round": "-"})
        fresh.append(worker_runs[-1])
    return fresh


async def one_run(h: Harness, rate: float, duration_s: float, warm_s: float = 3.0, bare: bool = False
                  ) -> dict[str, Any]:
    """ingest ack -> snapshot at a steady rate, through the worker or (bare=True) the bare loop."""
    topics = Topics(unique_prefix("freshness"))
    await ensure_topics(h.kafka, topics)
    ingest_port = free_port()
    ingest = ServiceProcess("services.ingest", {
        "KAFKA_BOOTSTRAP_SERVERS": h.kafka.bootstrap_servers, "LOOPLINE_TOPIC_PREFIX": topics.prefix,
        "LOOPLINE_SPEC_PATH": str(SPEC_PATH), "INGEST_PORT": str(ingest_port),
        "LOOPLINE_LOG_LEVEL": "WARNING",
    }, port=ingest_port, log_dir=h.tmp)
    worker = h.worker(topics.prefix, f"fresh{int(rate)}", offline=h.args.freshness_offline)
    per_batch = h.args.batch
    bare_proc: mp.Process | None = None
    interval = per_batch / rate
    n_batches = int((warm_s + duration_s) * rate / per_batch)
    n_warm = int(warm_s * rate / per_batch)
    # event time advancing as fast as the events are sent: concurrent requests that overtake
    # each other by a few hundred ms must not make an entity's event late (allowed lateness 5 min
    # in event time; at the generator's default 0.5 events per event-time second it was 150 ms)
    config = GeneratorConfig(seed=7, users=1000, events=n_batches * per_batch, rate_per_s=rate)
    raw = [e for e, _ in generate(config)]
    bodies = [(i, orjson.dumps(raw[i * per_batch:(i + 1) * per_batch])) for i in range(n_batches)]
    acks: dict[str, float] = {}
    measured_ids: set[str] = set()
    failures: Counter = Counter()
    lateness: list[float] = []  # how late each request left vs its schedule
    conn_parent, conn_child = mp.get_context("spawn").Pipe()
    reader = None
    try:
        if bare:
            log(f"  freshness at {rate:,.0f} events/s: starting ingest and the bare loop")
            await asyncio.to_thread(ingest.start)
            bare_proc = spawn(bare_loop_main, h.kafka.bootstrap_servers, topics["events"], topics.prefix,
                              f"{topics.prefix}bare.fresh", n_batches * per_batch)
            await asyncio.sleep(3)  # joined its group and positioned (it reads from the start anyway)
        else:
            log(f"  freshness at {rate:,.0f} events/s: starting ingest and the worker "
                f"(offline writer {'on' if h.args.freshness_offline else 'off'})")
            await asyncio.gather(asyncio.to_thread(ingest.start), asyncio.to_thread(worker.start))
        reader = spawn(snapshot_reader_main, h.kafka.bootstrap_servers, topics["features"], topics["events"],
                       conn_child)
        if not await asyncio.to_thread(conn_parent.poll, 60):
            raise RuntimeError("snapshot reader did not start")
        conn_parent.recv()
        meter = CpuMeter({"bare loop" if bare else "worker": bare_proc.pid if bare_proc else worker.proc.pid,
                          "ingest": ingest.proc.pid, "reader": reader.pid,
                          "broker": broker_pid()}).start()
        meter_t0 = time.monotonic()
        async with HttpPool("127.0.0.1", ingest_port, size=32) as client:
            async def post(i: int, body: bytes) -> None:
                try:
                    status, text = await asyncio.wait_for(client.post("/v1/events", body), 30)
                except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError) as exc:
                    failures[f"client {type(exc).__name__}"] += 1  # counted: an overloaded run still reports
                    return
                t = time.time()
                if status != 202:
                    failures[f"{status} {text[:100]!r}"] += 1
                    return
                ids = orjson.loads(text)["event_ids"]
                for eid in ids:
                    acks[eid] = t
                if i >= n_warm:
                    measured_ids.update(ids)

            log(f"    sending {n_batches * per_batch:,} events: {per_batch} per POST every "
                f"{interval * 1000:.1f} ms for {warm_s + duration_s:.0f} s (first {warm_s:.0f} s = warm-up)")
            tasks = []
            t0 = time.monotonic()
            for i, body in bodies:
                due = t0 + i * interval
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                lateness.append(time.monotonic() - due)
                tasks.append(asyncio.create_task(post(i, body)))
            # the schedule's span: the last request left at send_s - interval
            send_s = time.monotonic() - t0 + interval
            await asyncio.gather(*tasks)
            acked_s = time.monotonic() - t0
        # wait for the snapshots of every acknowledged event (or give up after 30 s)
        async with OffsetWatcher(h.kafka) as watch:
            deadline = time.monotonic() + 30
            while (end := await watch.end(topics["features"])) < len(acks) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)
            if end < len(acks) and not bare:
                log(f"    only {end:,} snapshots on {topics['features']} for {len(acks):,} acknowledged "
                    f"events after 30 s ({await watch.end(topics['events']):,} on {topics['events']}, "
                    f"{await watch.end(topics['events.dlq']):,} dead-lettered); "
                    f"worker log ({worker.log_path}):\n{worker.tail(40)}")
        cpu = meter.stop()
        cpu_wall = time.monotonic() - meter_t0
        conn_parent.send("stop")
        got, produced = await asyncio.to_thread(conn_parent.recv)
        text = "" if bare else await fetch_metrics(worker.url)
    except BaseException:
        if not bare:
            log(f"worker log ({worker.log_path}):\n{worker.tail(20)}")
        log(f"ingest log:\n{ingest.tail(20)}")
        raise
    finally:
        if reader is not None:
            stop_process(reader, 5)
        if bare_proc is not None:
            stop_process(bare_proc)
        await asyncio.gather(asyncio.to_thread(worker.stop), asyncio.to_thread(ingest.stop))

    by_id = {}
    for eid, recv, ts_ms in got:
        by_id.setdefault(eid, (recv, ts_ms / 1000))
    lat_recv, lat_ts, lat_rec, order = [], [], [], []
    for eid in measured_ids:
        if eid in by_id:
            recv, ts = by_id[eid]
            lat_recv.append((recv - acks[eid]) * 1000)
            lat_ts.append((ts - acks[eid]) * 1000)
            # from the event record's timestamp: ingest's producer stamps it when the record is queued,
            # before the broker's ack and the 202; so an upper bound of ack -> snapshot that does not
            # depend on when the load generator got round to reading the 202
            rec = (recv - produced[eid] / 1000) * 1000
            lat_rec.append(rec)
            order.append((acks[eid], rec))
    order.sort()
    q = max(1, len(order) // 4)
    first_q = median([x for _, x in order[:q]]) if order else float("nan")
    last_q = median([x for _, x in order[-q:]]) if order else float("nan")
    missing = len(measured_ids) - len(lat_recv)
    achieved = n_batches * per_batch / send_s
    sustained = (not failures and missing == 0 and achieved >= 0.95 * rate
                 and last_q <= max(250.0, 3 * first_q))
    res = {
        "run": "bare loop" if bare else "worker", "rate_target": rate, "rate_achieved": achieved,
        "measured": len(lat_recv), "missing": missing,
        "warm_up_events": n_warm * per_batch, "failures": dict(failures),
        "recv_ms": pct(lat_recv), "timestamp_ms": pct(lat_ts), "event_record_ms": pct(lat_rec),
        "negative_recv": sum(1 for x in lat_recv if x < 0),
        "first_quarter_p50_ms": first_q, "last_quarter_p50_ms": last_q, "sustained": sustained,
        "send_late_p99_ms": pct([x * 1000 for x in lateness])["p99"],
        "cpu_s": cpu, "cpu_wall_s": cpu_wall, "seconds": send_s, "all_acked_s": acked_s,
        "worker_metric_latency_mean_ms":
            1000 * metric_sum(text, "loopline_features_snapshot_latency_seconds_sum")
            / max(1.0, metric_sum(text, "loopline_features_snapshot_latency_seconds_count")),
    }
    r, t, e = res["recv_ms"], res["timestamp_ms"], res["event_record_ms"]
    log(f"    {len(lat_recv):,} events measured ({missing} without snapshot), sent at {achieved:,.0f}/s: "
        f"event record->snapshot received p50 {e['p50']:.1f} / p99 {e['p99']:.1f} / max {e['max']:.1f} ms; "
        f"202 seen by the client->snapshot received p50 {r['p50']:.1f} / p99 {r['p99']:.1f} / "
        f"max {r['max']:.1f} ms; "
        f"ack->snapshot record timestamp p50 {t['p50']:.1f} / p99 {t['p99']:.1f} ms; "
        f"{'sustained' if sustained else 'NOT sustained'} (median latency first quarter {first_q:.1f} ms, "
        f"last quarter {last_q:.1f} ms)")
    return res


def pct(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": float("nan"), "p99": float("nan"), "max": float("nan"), "n": 0}
    s = sorted(values)

    def at(p: float) -> float:
        return s[min(len(s) - 1, max(0, int(round(p / 100 * len(s) + 0.5)) - 1))]

    return {"p50": at(50), "p90": at(90), "p99": at(99), "max": s[-1], "n": len(s)}

def snapshot_reader_main(bootstrap: str, topic: str, events_topic: str, conn) -> None:
    """Child-process entry: reads `topic` (snapshots) and `events_topic` from their ends; after "stop"
    sends back [(event_id, recv, ts_ms)] of the snapshots and {event_id: ts_ms} of the event records."""
    os.environ["KAFKA_BOOTSTRAP_SERVERS"] = bootstrap
    asyncio.run(_snapshot_reader(KafkaSettings(), topic, events_topic, conn))


async def _snapshot_reader(kafka: KafkaSettings, topic: str, events_topic: str, conn) -> None:
    consumer = make_consumer(kafka, group_id=None, fetch_max_wait_ms=100)
    await consumer.start()
    got: list[tuple[str, float, int]] = []
    events: dict[str, int] = {}
    try:
        tps = []
        for name in (topic, events_topic):
            for _ in range(100):
                parts = consumer.partitions_for_topic(name)
                if parts:
                    break
                await consumer._client.force_metadata_update()  # noqa: SLF001
                await asyncio.sleep(0.1)
            tps += [TopicPartition(name, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        for tp in tps:
            await consumer.position(tp)  # resolve the end now, before anything is sent
        conn.send("ready")
        while not conn.poll():
            batches = await consumer.getmany(timeout_ms=50)
            now = time.time()
            for tp, recs in batches.items():
                for msg in recs:
                    if tp.topic == topic:
                        got.append((orjson.loads(msg.value)["event_id"], now, msg.timestamp))
                    else:
                        events[orjson.loads(msg.value)["event_id"]] = msg.timestamp
        conn.send((got, events))
    finally:
        await consumer.stop()


def report(runs: list[dict]) -> None:
    log("\n== 3. Freshness: ingest acknowledgement -> snapshot received")
    rows = []
    for r in runs:
        e, a, t = r["event_record_ms"], r["recv_ms"], r["timestamp_ms"]
        passed = r["sustained"] and e["p99"] <= GOAL_P99_MS
        goal = ("PASS" if passed else "MISS") if r["run"] == "worker" else "-"
        rows.append([r.get("round", "-"), r["run"], f"{r['rate_target']:,.0f}", f"{r['rate_achieved']:,.0f}",
                     f"{r['measured']:,}", r["missing"],
                     f"{e['p50']:.1f}", f"{e['p99']:.1f}", f"{e['max']:.1f}",
                     f"{a['p50']:.1f}", f"{a['p99']:.1f}", f"{t['p50']:.1f}", f"{t['p99']:.1f}",
                     "yes" if r["sustained"] else "NO", goal])
    log(table(["round", "run", "target ev/s", "sent ev/s", "measured", "missing", "p50 ms", "p99 ms",
               "max ms", "client p50", "client p99", "ts p50 ms", "ts p99 ms", "sustained",
               f"p99<={GOAL_P99_MS:.0f}ms"], rows))
    log("p50/p99/max: from the event record's Kafka timestamp (CreateTime: ingest's producer stamps it "
        "when it queues the record, before the broker's ack, after which ingest answers 202) to time.time() "
        "when a separate reader process (assigned to every partition of `features` and `events`, positioned "
        "at their ends before sending) received the snapshot: an upper bound of ack -> snapshot that does "
        "not depend on the load generator. "
        "client: from time.time() when the load generator had read the 202 (late when its process is busy: "
        "negative latencies, snapshot seen before the client processed the 202, are kept: "
        + ", ".join(str(r["negative_recv"]) for r in runs) + "). ts: client 202 -> the snapshot's Kafka "
        "timestamp (CreateTime, set by the worker's producer when the send is queued, before the broker "
        "ack).")
    for r in runs:
        cpu = r["cpu_s"]
        busy = {k: (v or 0) / r["cpu_wall_s"] for k, v in cpu.items()}
        own = (f"; worker's own mean ingested_at->send {r['worker_metric_latency_mean_ms']:.1f} ms"
               if r["run"] == "worker" else "")
        log(f"  round {r.get('round', '-')} {r['run']} at {r['rate_target']:,.0f}/s "
            f"(sending {r['seconds']:.1f} s, all 202s after {r['all_acked_s']:.1f} s, then waiting for the "
            f"last snapshots) cores busy: "
            + ", ".join(f"{k} {v:.2f}" for k, v in busy.items()) + own
            + f"; request send lateness p99 {r['send_late_p99_ms']:.1f} ms")
        if not r["sustained"]:
            log(f"  at {r['rate_target']:,.0f}/s the stack did NOT keep up: median latency grew from "
                f"{r['first_quarter_p50_ms']:.0f} ms (first quarter) to {r['last_quarter_p50_ms']:.0f} ms "
                f"(last quarter)"
                f"{'; failures ' + str(r['failures']) if r['failures'] else ''}")
