"""Trainer: examples/s learned online through Kafka next to a bare aiokafka loop and in-process, and a
batch retrain through the trainer next to the bare scikit-learn fit on the same data.

    deploy/with-kafka.sh .venv/bin/python -m bench.trainer [--examples N] [--batch-examples M]
        [--rounds R] [--batch-models gbm,logreg] [--fit-threads T] [--publish-every K] [--json]
    make bench        (deploy/run-bench.sh: every benchmark against a throwaway broker)

Online, per round, on a fresh topic prefix whose `training-examples` holds N pre-produced fraud
examples (examples/fraud/training.py, keyed by entity, 6 partitions):
 (a) the trainer, `python -m services.trainer`, with a spec holding only the fraud spec's river
     candidate `online_logreg` (StandardScaler | LogisticRegression);
 (b) a bare aiokafka loop, its peer, in its own process on the same topic (own consumer group);
 (c) the same river model learning in this process from the same examples, already parsed.
Batch, per scikit-learn candidate: a trainer whose spec holds only that candidate retrains on M
examples when asked (POST /v1/retrain), next to the same estimator's fit in this process.
The broker, the trainer (or the bare loop) and this process share the machine's cores. The report
ends with how each figure is measured. The default run takes about 3 minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import numpy as np
import orjson
import yaml
from prometheus_client.parser import text_string_to_metric_families
from threadpoolctl import threadpool_limits

from bench.common import (
    CpuMeter, broker_pid, event_loop_runner, machine, median, proc_cpu_s, require_kafka, sigterm_as_exit,
    table, unique_prefix,
)
from deploy.free_ports import free_port
from deploy.procs import ServiceProcess
from examples.fraud.training import SPEC_PATH, fraud_training_examples
from services.trainer.config import TrainerSettings
from services.trainer.domain import decode_example, holdout_split, train_batch
from services.trainer.metrics import TrainerMetrics
from services.trainer.service import Trainer
from shared.kafka import OutRecord, ensure_topics, make_producer, run_consumer, send_batched
from shared.modeling import PrequentialMetrics, Vectorizer, build_model, encode_label, predict_one_river
from shared.registry import Registry
from shared.serialization import dumps, parse_time
from shared.settings import KafkaSettings
from shared.spec import PipelineSpec, load_spec, parse_spec
from shared.topics import Topics

ONLINE_MODEL = "online_logreg"
ONLINE_GOAL = 0.9  # trainer examples/s >= 0.9x the bare loop's
BATCH_GOAL = 1.2  # retrain seconds <= 1.2x the bare fit's
# /metrics polling interval while the trainer drains. The times come from the trainer's own gauge of
# when it last learned, so the polling only has to notice the start and the end; each poll costs the
# trainer ~1 ms of CPU, which at 20 polls/s was ~2 % of what it was measured doing.
POLL_S = 0.25
LAST_LEARNED = "loopline_trainer_last_learned_timestamp_seconds"  # set once per batch that learned
LEARNED = "loopline_trainer_examples_total"  # {outcome="learned"}: examples the trainer has taken

EXPLAIN = """\
How each figure is measured:
 online (a) trainer: `python -m services.trainer` (spec: the fraud spec with only `online_logreg`, its
     training section unchanged) started on a fresh prefix whose training-examples already holds <N> examples,
     with TRAINER_PUBLISH_EVERY_EXAMPLES=<K> (a checkpoint, artifact + ModelVersion record, every <K> examples;
     a batch's offsets are committed once the checkpoint covering it is acknowledged) and
     TRAINER_MAX_IN_FLIGHT_RECORDS=<IN_FLIGHT> (the trainer checkpoints early once the examples waiting for a
     checkpoint reach half that bound, lest the stream stop at it; this one lets the checkpoint come every <K>).
     examples/s from the first to the N-th learned example, read by polling its /metrics every 250 ms
     (loopline_trainer_examples_total{outcome="learned"} and loopline_trainer_last_learned_timestamp_seconds,
     the trainer's clock when the batch that brought the count there was learned):
     (N - the count at the first poll that saw one) / (its time at the poll that saw N - its time at that poll).
     µs CPU/ex: the trainer's CPU from the first poll to the last / the same examples.
     Per example it decodes (orjson, field checks, occurred_at parsed), learns (the same prequential step as
     (b)) and counts (once per batch); with no scikit-learn candidate in its spec it keeps no batch window.
 online (a') the same with the trainer's defaults (checkpoint every 1,000 examples, 4,000 in flight).
 online (b) bare loop: one process (multiprocessing spawn, uvloop like the trainer) runs
     shared.kafka.run_consumer (make_consumer: own group, 1000 records per poll, read_committed; commit after
     each batch) on the same topic; per record orjson.loads, Vectorizer.river_x, encode_label, then
     predict_one_river + PrequentialMetrics.update + learn_one on build_model(online_logreg): the trainer's
     per-example model work and nothing else (no checkpoint, no window, no metrics). Timed in the process
     from the end of its first batch to the N-th example. Round 1 runs it once before, not counted.
 online (c) in-process: the same per-example steps as (b) on the <N> examples already parsed (orjson.loads
     before timing), in this process: no Kafka, no event loop.
 online (d) in-process, info: services.trainer's decode_example + Trainer.take per example (what the
     trainer's stream handler calls) in this process: the trainer's own work without its runtime and Kafka.
 µs CPU/ex: user+system CPU of that process over the timed interval / examples in it.
 batch: `python -m services.trainer` with a spec holding only that scikit-learn candidate (training:
     min_examples <M>, no label/schedule/drift triggers) on a fresh prefix holding <M> examples. Its first fit
     runs by itself once the window holds <M> (the 'initial' retrain, while the stream may still read; shown,
     not counted), then one requested retrain, not counted either (its first champion load imports skops);
     then, per round, POST /v1/retrain; the figure is that retrain's
     loopline_trainer_retrain_duration_seconds (the histogram's sum grows by it): window snapshot, the
     fit on the oldest 80 % in a retrain thread, evaluation on the latest 20 % (holdout metrics and reference
     statistics), the champion loaded and evaluated on the same holdout (the training data's reference
     statistics and the champion's evaluation run on a second thread during the fit), the gate, the artifact
     written (skops) and the ModelVersion records acknowledged. The trainer sits idle meanwhile. CPU-s: the
     trainer process (and any children) from the POST until the retrain was seen.
 batch bare fit: build_model(candidate).fit on the same 80 % (the <M> examples in event-time order as the
     window sorts them, X from Vectorizer.matrix, labels as int64), in this process, wall time (scikit-learn's
     OpenMP and BLAS threads limited to <T> for both: threadpoolctl here, OMP_NUM_THREADS & co. in the
     trainer's environment). Each round: bare fit, train_batch
     in-process, retrain.
 batch train_batch in-process, info: services.trainer.domain.train_batch, the function the trainer's retrain
     thread runs (fit, holdout predictions and metrics, reference statistics, skops dump, the champion's
     holdout metrics; that round's bare-fit model stands in for the champion), on the same window here:
     the share of the retrain that is the trainer's evaluation and dump rather than its thread and I/O.
 other load: CPU used by everything else on the machine meanwhile, in cores: above ~0.2 the figures are
     disturbed."""


def log(msg: str = "") -> None:
    print(msg, flush=True)


# ---------------------------------------------------------------- data and specs

def spec_variant(path: Path, models: list[str], training: dict[str, Any] | None = None) -> Path:
    """The fraud spec with only `models` (and `training` fields replaced), written to `path`."""
    doc = yaml.safe_load(SPEC_PATH.read_text())
    doc["models"] = [m for m in doc["models"] if m["name"] in models]
    doc["training"] = {**doc["training"], **(training or {})}
    text = yaml.safe_dump(doc, sort_keys=False)
    parse_spec(text)  # refused here rather than by the trainer at startup
    path.write_text(text)
    return path


def keyed(examples: list[dict[str, Any]]) -> list[tuple[bytes, bytes]]:
    """(key, value) of TrainingExample records, keyed by entity as the label join writes them."""
    return [(e["entity"].encode(), dumps(e)) for e in examples]


async def fresh_examples_topic(kafka: KafkaSettings, name: str, items: list[tuple[bytes, bytes]]) -> Topics:
    """A fresh topic prefix whose `training-examples` holds `items` (all acknowledged)."""
    topics = Topics(unique_prefix(name))
    await ensure_topics(kafka, topics, [topics["training-examples"]])
    producer = make_producer(kafka, linger_ms=5)
    await producer.start()
    try:
        t0 = time.perf_counter()
        topic = topics["training-examples"]
        await asyncio.gather(*await send_batched(producer, [OutRecord(topic, k, v) for k, v in items]))
        log(f"    pre-produced {len(items):,} examples into {topic} in {time.perf_counter() - t0:.1f} s")
    finally:
        await producer.stop()
    return topics


def child_cpu_s(pid: int) -> float:
    """CPU seconds of a process's children so far (0 if none: the trainer retrains in a thread)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            total += proc_cpu_s(int(stat.parent.name)) or 0.0
    return total


# ---------------------------------------------------------------- the per-example work of (b) and (c)

class Learner:
    """The online candidate's prequential step, as the trainer does it: predict, score, learn."""

    def __init__(self, spec: PipelineSpec):
        self.spec, self.task = spec, spec.label.type
        self.vectorizer = Vectorizer(spec)
        candidate = next(c for c in spec.models if c.name == ONLINE_MODEL)
        self.model = build_model(candidate, spec)
        self.metrics = PrequentialMetrics(spec)

    def learn(self, record: dict[str, Any]) -> None:
        x = self.vectorizer.river_x(record["features"], record["data"])
        y = encode_label(self.spec, record["label"])
        score, label, proba = predict_one_river(self.model, self.task, x)
        self.metrics.update(y, score, label, proba)
        self.model.learn_one(x, y)


def in_process(spec: PipelineSpec, values: list[bytes]) -> dict[str, Any]:
    """(c): the examples already parsed, learned in this process."""
    records = [orjson.loads(v) for v in values]
    learner = Learner(spec)
    meter = CpuMeter({"broker": broker_pid()}).start()
    t0, c0 = time.perf_counter(), time.process_time()
    for record in records:
        learner.learn(record)
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"examples": len(records), "seconds": secs, "rate": len(records) / secs,
            "cpu_us": cpu / len(records) * 1e6, "cpu_s": meter.stop(), "metrics": learner.metrics.values()}


def trainer_in_process(spec: PipelineSpec, values: list[bytes], tmp: Path) -> dict[str, Any]:
    """(d): the trainer's own per-example calls (decode_example, Trainer.take) in this process, no Kafka:
    how much of (a)'s cost is the trainer's domain work rather than its runtime."""
    settings = TrainerSettings(data_dir=tmp / "inproc" / "data", artifact_url=str(tmp / "inproc" / "artifacts"))
    trainer = Trainer(spec, settings, Registry(), TrainerMetrics())
    t0, c0 = time.perf_counter(), time.process_time()
    for offset, value in enumerate(values):
        trainer.take(0, offset, decode_example(spec, value))
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"examples": len(values), "seconds": secs, "rate": len(values) / secs, "cpu_us": cpu / len(values) * 1e6}


def bare_loop_main(bootstrap: str, topic: str, group: str, spec_path: str, total: int, conn: Any) -> None:
    """Child-process entry of (b): sends ("first", t, cpu, n) after its first batch, then ("done", {...})."""
    os.environ["KAFKA_BOOTSTRAP_SERVERS"] = bootstrap
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    event_loop_runner()(_bare_loop(KafkaSettings(), topic, group, load_spec(spec_path), total, conn))


async def _bare_loop(kafka: KafkaSettings, topic: str, group: str, spec: PipelineSpec, total: int,
                     conn: Any) -> None:
    learner = Learner(spec)
    finished = asyncio.Event()
    done, first = 0, None

    async def handle(records: list) -> None:
        nonlocal done, first
        for msg in records:
            learner.learn(orjson.loads(msg.value))
        done += len(records)
        if records and first is None:
            first = (time.monotonic(), time.process_time(), done)
            conn.send(("first", *first))
        if done >= total:
            finished.set()

    await run_consumer(kafka, [topic], group, handle, stop=finished, name="bare loop")
    t, cpu = time.monotonic(), time.process_time()
    timed = done - first[2]
    conn.send(("done", {"examples": timed, "seconds": t - first[0], "rate": timed / (t - first[0]),
                        "cpu_us": (cpu - first[1]) / timed * 1e6, "metrics": learner.metrics.values(),
                        "total": done}))


# ---------------------------------------------------------------- the trainer as a process

class TrainerRun:
    """`python -m services.trainer` on one prefix with one spec, and reading its metrics."""

    def __init__(self, tmp: Path, kafka: KafkaSettings, topics: Topics, spec: Path, name: str, **env: str):
        port = free_port()
        self.svc = ServiceProcess("services.trainer", {
            "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers, "LOOPLINE_TOPIC_PREFIX": topics.prefix,
            "LOOPLINE_SPEC_PATH": str(spec), "TRAINER_PORT": str(port), "LOOPLINE_LOG_LEVEL": "WARNING",
            "TRAINER_DATA_DIR": str(tmp / name / "data"), "TRAINER_ARTIFACT_URL": str(tmp / name / "artifacts"),
            **env}, port=port, log_dir=tmp, ready_timeout=180)
        self.client = httpx.AsyncClient(base_url=self.svc.url, timeout=10)

    async def start(self) -> None:
        await asyncio.to_thread(self.svc.start, False)

    async def stop(self) -> None:
        await self.client.aclose()
        await asyncio.to_thread(self.svc.stop)

    @property
    def pid(self) -> int:
        assert self.svc.proc is not None
        return self.svc.proc.pid

    async def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
        """Every sample of /metrics as {(name, sorted labels): value}; None while it does not answer."""
        if not self.svc.running:
            raise RuntimeError(f"the trainer exited: {self.svc.tail(20)}")
        try:
            text = (await self.client.get("/metrics")).text
        except httpx.HTTPError:
            return None
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}


def sample(metrics: dict, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in metrics.items() if n == name and want <= set(ls))


# ---------------------------------------------------------------- online

def in_flight_for(publish_every: int) -> int:
    """TRAINER_MAX_IN_FLIGHT_RECORDS that lets a checkpoint every `publish_every` examples come: the
    trainer holds a batch's offsets until a checkpoint covers it and forces one once the held records
    reach half the in-flight bound, so the bound must be at least twice publish_every (and a batch)."""
    default = TrainerSettings.model_fields["max_in_flight_records"].default
    poll = TrainerSettings.model_fields["max_poll_records"].default
    return max(default, 2 * (publish_every + poll))


async def trainer_drain(kafka: KafkaSettings, tmp: Path, spec_path: Path, topics: Topics, n: int, r: int,
                        name: str = "trainer", **env: str) -> dict:
    """(a): the trainer started on `topics`, whose training-examples holds n examples, until it learned them."""
    trainer = TrainerRun(tmp, kafka, topics, spec_path, f"{name}{r}", **env)
    spawned = time.monotonic()
    await trainer.start()
    try:
        first: tuple[float, float, float] | None = None  # (poll time, examples learned, when the trainer learned them)
        meter: CpuMeter | None = None
        deadline = spawned + 120 + n / 500
        while True:
            m = await trainer.metrics()
            now = time.monotonic()
            learned = sample(m, LEARNED, outcome="learned") if m else 0
            if first is None and learned > 0:
                first = (now, learned, sample(m, LAST_LEARNED))
                meter = CpuMeter({"process": trainer.pid, "broker": broker_pid()}).start()
            if learned >= n:
                break
            if now > deadline:
                raise TimeoutError(f"the trainer learned {learned:,} of {n:,} examples in {now - spawned:.0f} s")
            await asyncio.sleep(POLL_S)
        assert first is not None and meter is not None
        cpu = meter.stop()
        seconds = sample(m, LAST_LEARNED) - first[2]  # the trainer's own clock: no polling latency
        outcomes = {dict(ls).get("outcome"): v for (metric, ls), v in m.items() if metric == LEARNED and v}
    except BaseException:
        log(f"trainer log ({trainer.svc.log_path}):\n{trainer.svc.tail(30)}")
        raise
    finally:
        await trainer.stop()
    if set(outcomes) != {"learned"}:
        raise AssertionError(f"the trainer did not learn every example once: {outcomes}")
    return _drain(name, r, n - int(first[1]), seconds, cpu, startup_s=first[0] - spawned, env=env)


async def bare_drain(kafka: KafkaSettings, spec_path: Path, topics: Topics, n: int, r: int,
                     record: bool = True) -> dict | None:
    """(b): the bare loop in its own process, its own consumer group on `topics`' training-examples."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=bare_loop_main, daemon=True,
                       args=(kafka.bootstrap_servers, topics["training-examples"],
                             topics.group("bench-bare", str(r)), str(spec_path), n, child))
    proc.start()
    try:
        await asyncio.to_thread(_recv, parent, 120)  # ("first", ...): its first batch is done
        meter = CpuMeter({"process": proc.pid, "broker": broker_pid()}).start()
        _, result = await asyncio.to_thread(_recv, parent, 120 + n / 500)
        cpu = meter.stop()
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.terminate()
    if result["total"] != n:
        raise AssertionError(f"the bare loop read {result['total']:,} examples, not {n:,}")
    if not record:
        return None
    return _drain("bare", r, result["examples"], result["seconds"], cpu, cpu_us=result["cpu_us"],
                  metrics=result["metrics"])


def _recv(conn: Any, timeout: float) -> Any:
    if not conn.poll(timeout):
        raise TimeoutError(f"the bare loop sent nothing in {timeout:.0f} s")
    return conn.recv()


def _drain(name: str, r: int, examples: int, seconds: float, cpu: dict, **extra: Any) -> dict:
    d = {"name": name, "round": r, "examples": examples, "seconds": seconds, "rate": examples / seconds,
         "cpu_s": cpu, **extra}
    d.setdefault("cpu_us", (cpu.get("process") or 0) / examples * 1e6)
    log(f"    {name}: {examples:,} examples in {seconds:.2f} s = {d['rate']:,.0f} ex/s, "
        f"{d['cpu_us']:,.0f} µs CPU/example; other load {(cpu.get('other') or 0) / seconds:.2f} cores")
    return d


# ---------------------------------------------------------------- batch

class Window(NamedTuple):
    """The M examples as the trainer's window snapshot gives them: event-time order, labels encoded."""

    X: np.ndarray
    y: np.ndarray  # object array, as the window holds labels
    t: np.ndarray
    cut: int  # the oldest `cut` rows are fitted, the rest held out

    @classmethod
    def of(cls, spec: PipelineSpec, examples: list[dict]) -> Window:
        t = np.array([parse_time(e["occurred_at"]).timestamp() for e in examples])
        order = np.argsort(t, kind="stable")
        ordered = [examples[i] for i in order]
        X = Vectorizer(spec).matrix((e["features"], e["data"]) for e in ordered)
        y = np.array([encode_label(spec, e["label"]) for e in ordered], dtype=object)
        return cls(X, y, t[order], holdout_split(len(ordered), spec.training.holdout_fraction))


def fit_threads(n: int) -> contextlib.AbstractContextManager:
    """scikit-learn's OpenMP and BLAS threads in this process limited to n (0: the libraries' default)."""
    return threadpool_limits(n) if n else contextlib.nullcontext()


def thread_env(n: int) -> dict[str, str]:
    """The same limit for a process we start (the trainer's own setting, and the libraries' variables)."""
    names = ("TRAINER_FIT_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    return {name: str(n) for name in names} if n else {}


def bare_fit(spec: PipelineSpec, w: Window, threads: int, trainer_pid: int) -> tuple[dict, Any]:
    """The candidate's estimator fitted on the window's oldest rows, in this process: (figures, model)."""
    model = build_model(spec.models[0], spec)
    X, y = w.X[:w.cut], w.y[:w.cut].astype(np.int64)
    meter = CpuMeter({"broker": broker_pid(), "trainer": trainer_pid}).start()
    t0 = time.perf_counter()
    with fit_threads(threads):
        model.fit(X, y)
    secs = time.perf_counter() - t0
    cpu = meter.stop()
    log(f"    bare fit: {secs:.2f} s ({cpu['bench']:.2f} CPU-s); other load {(cpu.get('other') or 0) / secs:.2f} cores")
    return {"seconds": secs, "cpu_s": cpu}, model


def train_batch_in_process(spec: PipelineSpec, w: Window, champion: Any, threads: int) -> dict:
    """Info: what the trainer's retrain thread runs (domain.train_batch: fit, evaluation, reference
    statistics, artifact dump, the champion evaluated on the holdout), here in this process."""
    t0, c0 = time.perf_counter(), time.process_time()
    with fit_threads(threads):
        train_batch(spec, Vectorizer(spec), w.X, w.y, w.t, lambda: ("sklearn", champion))
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    log(f"    train_batch in-process: {secs:.2f} s ({cpu:.2f} CPU-s)")
    return {"seconds": secs, "cpu": cpu}


async def batch_model(args, kafka: KafkaSettings, tmp: Path, name: str, examples: list[dict], items) -> dict:
    """One scikit-learn candidate: the trainer's cold retrain, then rounds of bare fit and requested retrain."""
    m_examples = len(items)
    doc_training = {"min_examples": m_examples, "max_examples": max(m_examples, 200_000),
                    "triggers": {"every_n_labels": None, "schedule": None, "on_drift": False}}
    spec_path = spec_variant(tmp / f"batch-{name}.yaml", [name], doc_training)
    spec = load_spec(spec_path)
    window = Window.of(spec, examples)
    cut = window.cut
    topics = await fresh_examples_topic(kafka, f"trainerb{name}", items)
    trainer = TrainerRun(tmp, kafka, topics, spec_path, f"batch-{name}", **thread_env(args.fit_threads))
    await trainer.start()
    result: dict[str, Any] = {"model": name, "algorithm": spec.models[0].algorithm,
                              "params": spec.models[0].params, "examples": m_examples, "fit_rows": cut,
                              "retrains": [], "bare": [], "train_batch": []}
    try:
        m = await wait_metrics(trainer, lambda m: sample(m, LEARNED, outcome="learned") >= m_examples
                               and sample(m, "loopline_trainer_retrains_total", trigger="initial") >= 1,
                               180 + m_examples / 200, "the window full and the initial fit done")
        result["cold_s"] = sample(m, "loopline_trainer_retrain_duration_seconds_sum")
        log(f"    initial retrain (while the stream may still read): "
            f"{result['cold_s']:.2f} s")
        # Not counted: the first call of each pays one-off imports (skops, scikit-learn's metrics) and,
        # in the trainer, the first champion load.
        k = min(2000, m_examples)
        warm = Window(window.X[:k], window.y[:k], window.t[:k], holdout_split(k, spec.training.holdout_fraction))
        train_batch_in_process(spec, warm, bare_fit(spec, warm, args.fit_threads, trainer.pid)[1], args.fit_threads)
        result["warmup_s"] = (await requested_retrain(trainer, name))["seconds"]
        log("    (the above not counted: warm-up)")
        for r in range(1, args.rounds + 1):
            fit, model = bare_fit(spec, window, args.fit_threads, trainer.pid)
            result["bare"].append(fit)
            result["train_batch"].append(train_batch_in_process(spec, window, model, args.fit_threads))
            result["retrains"].append(await requested_retrain(trainer, name))
    except BaseException:
        log(f"trainer log ({trainer.svc.log_path}):\n{trainer.svc.tail(30)}")
        raise
    finally:
        await trainer.stop()
    for rt in result["retrains"]:
        if rt["fit_rows"] != cut:
            raise AssertionError(f"the trainer fitted {rt['fit_rows']:,} rows, the bare fit {cut:,}")
    return result


async def wait_metrics(trainer: TrainerRun, done, timeout_s: float, what: str) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        m = await trainer.metrics()
        if m and done(m):
            return m
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} after {timeout_s:.0f} s")
        await asyncio.sleep(0.2)


async def requested_retrain(trainer: TrainerRun, name: str) -> dict:
    """POST /v1/retrain; the retrain's duration from the histogram; CPU of the trainer and its children."""
    before = await wait_metrics(trainer, lambda m: True, 30, "metrics")
    count = sample(before, "loopline_trainer_retrain_duration_seconds_count")
    total = sample(before, "loopline_trainer_retrain_duration_seconds_sum")
    cpu0 = child_cpu_s(trainer.pid)
    meter = CpuMeter({"process": trainer.pid, "broker": broker_pid()}).start()
    t0 = time.monotonic()
    (await trainer.client.post("/v1/retrain")).raise_for_status()
    after = await wait_metrics(trainer, lambda m: sample(m, "loopline_trainer_retrain_duration_seconds_count") > count,
                               600, "retrain")
    wall = time.monotonic() - t0
    cpu = meter.stop()
    cpu["children"] = child_cpu_s(trainer.pid) - cpu0
    if cpu.get("other") is not None:  # the meter counted a child process as another's
        cpu["other"] = max(0.0, cpu["other"] - cpu["children"])
    secs = sample(after, "loopline_trainer_retrain_duration_seconds_sum") - total
    published = sample(after, "loopline_trainer_retrains_total", trigger="request", outcome="published")
    if published != sample(before, "loopline_trainer_retrains_total", trigger="request", outcome="published") + 1:
        raise RuntimeError(f"the retrain was not published: {(await trainer.client.get('/readyz')).text}")
    listed = (await trainer.client.get("/v1/models")).json()["versions"]
    newest = max((v for v in listed if v["name"] == name), key=lambda v: v["version"])
    detail = (await trainer.client.get(f"/v1/models/{name}/{newest['version']}")).json()
    log(f"    retrain: {secs:.2f} s (POST -> seen {wall:.2f} s; trainer {cpu['process']:.2f} + children "
        f"{cpu['children']:.2f} CPU-s); v{newest['version']} {newest['stage']}: {newest['reason']}; "
        f"other load {(cpu.get('other') or 0) / wall:.2f} cores")
    return {"seconds": secs, "wall_s": wall, "cpu_s": cpu, "published": published, "version": newest["version"],
            "stage": newest["stage"], "reason": newest["reason"], "metrics": newest["metrics"],
            "fit_rows": detail["lineage"]["data"]["examples"]}


# ---------------------------------------------------------------- report

PATHS = {"trainer": "(a) trainer", "bare": "(b) bare aiokafka loop",
         "trainer-defaults": "(a') trainer at its defaults (info)"}


def report(runs: dict[str, Any], args) -> dict:
    result: dict[str, Any] = {"machine": machine(), **runs, "goals": {}}
    if runs["online"]:
        report_online(runs, args, result)
    for b in runs["batch"]:
        report_batch(b, result)
    loads = [(d["cpu_s"].get("other") or 0) / d["seconds"] for d in runs["online"]]
    loads += [(rt["cpu_s"].get("other") or 0) / rt["wall_s"] for b in runs["batch"] for rt in b["retrains"]]
    if loads and median(loads) > 0.25:
        log(f"\nWARNING: other processes used {median(loads):.2f} cores (median over the timed runs) while this ran; "
            "rates and times are disturbed, run again on a quiet machine. CPU per example is the steadier figure.")
    explain = EXPLAIN
    for token, value in {"<N>": f"{args.examples:,}", "<K>": f"{args.publish_every:,}",
                         "<IN_FLIGHT>": f"{in_flight_for(args.publish_every):,}", "<M>": f"{args.batch_examples:,}",
                         "<T>": str(args.fit_threads or "the libraries' default")}.items():
        explain = explain.replace(token, value)
    log("\n" + explain)
    return result


def report_online(runs: dict[str, Any], args, result: dict) -> None:
    online, inproc, take = runs["online"], runs["in_process"], runs["trainer_in_process"]
    log(f"\n== Online learning, {args.examples:,} examples per run; examples/s from the first to the last "
        f"learned (trainer: checkpoint every {args.publish_every:,} examples)")

    def per_ex(d: dict, who: str) -> str:
        return f"{(d['cpu_s'].get(who) or 0) / d['examples'] * 1e6:,.1f}"

    def other(d: dict) -> str:
        return f"{(d['cpu_s'].get('other') or 0) / d['seconds']:.2f}"

    rows = [[d["round"], PATHS[d["name"]], f"{d['examples']:,}", f"{d['seconds']:.2f}", f"{d['rate']:,.0f}",
             f"{d['cpu_us']:,.1f}", per_ex(d, "broker"), other(d)] for d in online]
    rows.append(["-", "(c) in-process, parsed", f"{inproc['examples']:,}", f"{inproc['seconds']:.2f}",
                 f"{inproc['rate']:,.0f}", f"{inproc['cpu_us']:,.1f}", "-", other(inproc)])
    rows.append(["-", "(d) in-process, decode_example + Trainer.take (info)", f"{take['examples']:,}",
                 f"{take['seconds']:.2f}", f"{take['rate']:,.0f}", f"{take['cpu_us']:,.1f}", "-", "-"])
    log(table(["round", "path", "examples", "seconds", "examples/s", "µs CPU/ex", "broker µs/ex", "other load"],
              rows))
    trainers = [d for d in online if d["name"] == "trainer"]
    bares = [d for d in online if d["name"] == "bare"]
    t_rate, b_rate = median([d["rate"] for d in trainers]), median([d["rate"] for d in bares])
    t_cpu, b_cpu = median([d["cpu_us"] for d in trainers]), median([d["cpu_us"] for d in bares])
    ratio = t_rate / b_rate
    ok = ratio >= ONLINE_GOAL
    log(f"medians: trainer {t_rate:,.0f} ex/s ({t_cpu:,.1f} µs CPU/ex), bare loop {b_rate:,.0f} ex/s "
        f"({b_cpu:,.1f} µs), in-process {inproc['rate']:,.0f} ex/s ({inproc['cpu_us']:,.1f} µs)")
    per_round = ", ".join(f"{t['rate'] / b['rate']:.2f}x" for t, b in zip(trainers, bares))
    log(f"trainer / bare loop {ratio:.2f}x (per round {per_round}); the trainer's CPU per example "
        f"{t_cpu / b_cpu:.2f}x the bare loop's; in-process / bare loop {inproc['rate'] / b_rate:.2f}x")
    log(f"goal trainer >= {ONLINE_GOAL}x the bare loop: {ratio:.2f}x -> {'PASS' if ok else 'MISS'}")
    result["goals"]["online"] = {"ratio": ratio, "goal": ONLINE_GOAL, "pass": ok, "trainer_rate": t_rate,
                                 "bare_rate": b_rate, "in_process_rate": inproc["rate"],
                                 "trainer_cpu_us": t_cpu, "bare_cpu_us": b_cpu}


def report_batch(b: dict, result: dict) -> None:
    log(f"\n== Batch retrain, {b['model']} ({b['algorithm']} {b['params']}), {b['examples']:,} examples "
        f"({b['fit_rows']:,} fitted, the rest held out)")
    rows = []
    for r, (bare, tb, rt) in enumerate(zip(b["bare"], b["train_batch"], b["retrains"]), 1):
        rows.append([r, "bare fit", f"{bare['seconds']:.2f}", f"{bare['cpu_s']['bench']:.2f}", "",
                     f"{(bare['cpu_s'].get('other') or 0) / bare['seconds']:.2f}"])
        rows.append([r, "train_batch in-process (info)", f"{tb['seconds']:.2f}", f"{tb['cpu']:.2f}",
                     f"{tb['seconds'] / bare['seconds']:.2f}x", ""])
        rows.append([r, "trainer retrain", f"{rt['seconds']:.2f}",
                     f"{rt['cpu_s']['process'] + rt['cpu_s']['children']:.2f}",
                     f"{rt['seconds'] / bare['seconds']:.2f}x",
                     f"{(rt['cpu_s'].get('other') or 0) / rt['wall_s']:.2f}"])
    log(table(["round", "what", "seconds", "CPU-s", "vs bare", "other load"], rows))
    fit, retrain = median([x["seconds"] for x in b["bare"]]), median([x["seconds"] for x in b["retrains"]])
    ok = retrain / fit <= BATCH_GOAL
    log(f"not counted: the initial retrain {b['cold_s']:.2f} s, the first requested one {b['warmup_s']:.2f} s; "
        f"medians: retrain {retrain:.2f} s, bare fit {fit:.2f} s")
    log(f"goal retrain <= {BATCH_GOAL}x the bare fit: {retrain / fit:.2f}x -> {'PASS' if ok else 'MISS'}")
    result["goals"][f"batch_{b['model']}"] = {"ratio": retrain / fit, "goal": BATCH_GOAL, "pass": ok,
                                              "retrain_s": retrain, "bare_fit_s": fit}


# ---------------------------------------------------------------- main

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.trainer", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=50_000, help="examples per online run (default %(default)s)")
    ap.add_argument("--batch-examples", type=int, default=100_000,
                    help="examples in the batch window (default %(default)s)")
    ap.add_argument("--rounds", type=int, default=3, help="online rounds, and retrains per batch model "
                                                          "(default %(default)s)")
    ap.add_argument("--batch-models", default="gbm,logreg",
                    help="the fraud spec's scikit-learn candidates to retrain, comma-separated; empty: no batch "
                         "figure (default %(default)s)")
    ap.add_argument("--fit-threads", type=int, default=1,
                    help="OpenMP/BLAS threads of every scikit-learn fit, the trainer's and the bare one (0: the "
                         "libraries' default, every core; default %(default)s: on a shared machine their "
                         "threads spin while they wait for a core, and a fit's time swings tenfold)")
    ap.add_argument("--publish-every", type=int, default=10_000,
                    help="TRAINER_PUBLISH_EVERY_EXAMPLES of the online trainer (default %(default)s)")
    ap.add_argument("--no-defaults-run", dest="defaults_run", action="store_false",
                    help="skip the extra online run of the trainer at its default settings (info)")
    ap.add_argument("--skip-online", action="store_true")
    ap.add_argument("--json", action="store_true", help="also print the results as one JSON object (last line)")
    args = ap.parse_args(argv)
    args.batch_models = [m for m in args.batch_models.split(",") if m]
    known = {m["name"] for m in yaml.safe_load(SPEC_PATH.read_text())["models"] if m["library"] == "sklearn"}
    if set(args.batch_models) - known:
        ap.error(f"--batch-models: the fraud spec's scikit-learn candidates are {sorted(known)}")
    if min(args.examples, args.batch_examples, args.rounds, args.publish_every) < 1 or args.fit_threads < 0:
        ap.error("counts must be >= 1")
    return args


async def run(args, kafka: KafkaSettings, tmp: Path, examples: list[dict]) -> dict[str, Any]:
    spec_path = spec_variant(tmp / "online.yaml", [ONLINE_MODEL])
    out: dict[str, Any] = {"online": [], "batch": []}
    if not args.skip_online:
        n = args.examples
        items = keyed(examples[:n])
        env = {"TRAINER_PUBLISH_EVERY_EXAMPLES": str(args.publish_every),
               "TRAINER_MAX_IN_FLIGHT_RECORDS": str(in_flight_for(args.publish_every))}
        log(f"\n-- online: {args.rounds} round(s) of the trainer ({', '.join(f'{k}={v}' for k, v in env.items())}), "
            f"then the bare loop, on a fresh prefix each")
        for r in range(1, args.rounds + 1):
            log(f"  round {r}")
            topics = await fresh_examples_topic(kafka, f"trainer{r}", items)
            if r == 1:
                log("    (bare loop once, not counted: the fresh broker warms up)")
                await bare_drain(kafka, spec_path, topics, n, 0, record=False)
            out["online"].append(await trainer_drain(kafka, tmp, spec_path, topics, n, r, **env))
            out["online"].append(await bare_drain(kafka, spec_path, topics, n, r))
        if args.defaults_run:
            log("  the trainer at its default settings (info)")
            topics = await fresh_examples_topic(kafka, "trainerdefaults", items)
            out["online"].append(await trainer_drain(kafka, tmp, spec_path, topics, n, 1, "trainer-defaults"))
        spec = load_spec(spec_path)
        log("  in-process")
        out["in_process"] = in_process(spec, [v for _, v in items])
        out["trainer_in_process"] = trainer_in_process(spec, [v for _, v in items], tmp)
        for key in ("in_process", "trainer_in_process"):
            d = out[key]
            log(f"    {key}: {d['examples']:,} examples in {d['seconds']:.2f} s = {d['rate']:,.0f} ex/s, "
                f"{d['cpu_us']:,.1f} µs CPU/example")
    for name in args.batch_models:
        log(f"\n-- batch: {name}, {args.batch_examples:,} examples")
        batch = examples[:args.batch_examples]
        out["batch"].append(await batch_model(args, kafka, tmp, name, batch, keyed(batch)))
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    kafka = require_kafka("bench.trainer")
    sigterm_as_exit()
    logging.getLogger("aiokafka").setLevel(logging.ERROR)  # NotLeaderForPartition right after topic creation
    started = time.perf_counter()
    log(f"trainer bench: {machine()}, load average {os.getloadavg()[0]:.2f}, broker {kafka.bootstrap_servers}")
    n = max(args.examples, args.batch_examples if args.batch_models else 0)
    examples = fraud_training_examples(n, seed=11, users=1000)
    positives = sum(1 for e in examples if e["label"]) / len(examples)
    log(f"{len(examples):,} fraud training examples built in {time.perf_counter() - started:.0f} s "
        f"(examples/fraud/training.py, seed 11, 1000 users, {positives:.1%} fraud)")
    tmp = Path(tempfile.mkdtemp(prefix="loopline-bench-trainer."))
    try:
        runs = event_loop_runner()(run(args, kafka, tmp, examples))
    except BaseException:
        log(f"logs kept in {tmp}")
        raise
    shutil.rmtree(tmp, ignore_errors=True)
    result = report(runs, args)
    log(f"\nThe broker, the trainer (or the bare loop) and this process share the machine's {os.cpu_count()} "
        f"cores. Total {time.perf_counter() - started:.0f} s.")
    if args.json:
        result["config"] = vars(args)
        print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
