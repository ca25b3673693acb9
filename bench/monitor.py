"""Monitor: (a) predictions/s `python -m services.monitor` keeps up with on a real broker, beside the
serving benchmark's throughput; (b) the in-process update cost per input per prediction; (c) data
drift on 100,000 reference and 100,000 current rows x 20 numeric features, our binned sketches beside
Evidently's DataDriftPreset and NannyML's UnivariateDriftCalculator on the same data; (d) concept-drift
detection delay and false alarms on synthetic drift streams, the monitor's detector path beside
river's own detector in-process.

    deploy/with-kafka.sh .venv/bin/python -m bench.monitor [--parts a,b,c,d] [--predictions N]
        [--label-share S] [--serving-rps R] [--rows N] [--rounds R] [--seeds K] [--json]
    .venv/bin/python -m bench.monitor --parts b,c,d        (no broker needed)

Evidently and NannyML run in their own virtualenvs under bench/.peers/ (git-ignored), built on first
use from bench/peers/evidently.txt and nannyml.txt, each timed inside its process by
bench/peers/drift_peer.py. Everything shares this machine's cores with whatever else runs on it: each
part reports the other load it saw. The report ends with how each figure is measured.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

from bench.common import (
    ROOT, CpuMeter, GroupOffsets, OffsetWatcher, broker_pid, event_loop_runner, machine, machine_busy_s, proc_cpu_s,
    require_kafka, sigterm_as_exit, table, unique_prefix,
)
from shared.metrics import metric_value

SPEC_PATH = ROOT / "examples" / "fraud" / "pipeline.yaml"
MODEL_NAME, MODEL_VERSION = "logreg", 1  # the fraud spec's scikit-learn logistic regression
PARTS = ("a", "b", "c", "d")
GOAL_B_US = 5.0  # µs per input per prediction
GOAL_C_RATIO = 0.2  # our drift time <= 0.2x NannyML's
PEERS = ("evidently", "nannyml")
WARM_UP = 5_000  # (d) examples the Hoeffding tree learns before the Agrawal stream

EXPLAIN = """\
How each figure is measured:
 (a) A fresh topic prefix on the broker gets a champion ModelVersion of the fraud spec's `logreg` on `models`
     (fitted here on the first 80 % of <EXAMPLES> fraud training examples made with the real feature engine;
     its reference statistics by shared.modeling.reference_statistics on them and the holdout's scores, as
     the trainer computes them), then <N> Prediction records on `predictions` (the serving log's format:
     every model input by name, 17 monitored inputs; the examples cycled with fresh event ids, scored by the
     model) and, for a share <S> of them, their TrainingExample (label) on `training-examples`, produced
     before the monitor starts. Then `python -m services.monitor` (the fraud spec, defaults) drains the
     backlog: the consumer group's committed offsets over its three source topics are read every 0.1 s
     (bench.common.GroupOffsets, a consumer that never joins the group). Rate = records committed between
     the first commit that moved and the poll that saw the whole backlog committed / that time; predictions/s
     counts the predictions in it (each with its share of labels). CPU: the monitor process's (and the
     broker's) user+system CPU over the same interval / records. Checked afterwards on its /metrics: every
     prediction and label read as ok, the labelled count. Compared with Loopline serving's one-row req/s at
     16 connections, measured by bench.serving (`--servers loopline --connections 16`) in this run on the
     same broker unless --serving-rps gives the figure.
 (b) In this process: services.monitor.domain.InputWindows (the champion's reference from (a), window_size
     from the spec) .add(vector, score) over the prediction vectors of (a), windows closed as the monitor
     closes them; µs per prediction (median of <ROUNDS> passes over <B_N> predictions) and per monitored
     input (17; the score's sketch rides along). Also, as information, Monitor.on_prediction (the stream
     handler's whole per-prediction work: windows, join-table reads and writes on a dict) per prediction.
 (c) Synthetic data, seeded: <ROWS> reference and <ROWS> current rows of 20 numeric features (normal,
     lognormal, uniform, exponential; no missing values); 6 drifted in the current rows (see the table), one
     only slightly (0.05 sd). Ours, in this process, from the raw arrays: per feature the reference's edges and
     counts as the trainer makes them (shared.modeling.quantile_bins: quantile_edges + bin_counts), a services.monitor Sketch over
     them, Sketch.add_many(current column), Sketch.statistics() (PSI, binned KS and its p-value); flagged:
     PSI > 0.2 (the fraud spec's data_drift threshold); KS p < 0.01 shown too. Evidently: Report([
     DataDriftPreset()]).run(current, reference) with its defaults; NannyML: UnivariateDriftCalculator(
     column_names=all 20).fit(reference).calculate(current) with its defaults; each in its own venv and
     process, timed inside it on DataFrames built before the clock starts. Median of <ROUNDS> rounds each.
 (d) Error streams with a change at a known position, <SEEDS> seeds each: Bernoulli errors whose rate
     steps up, one without a change (false alarms only), and river.datasets.synth.ConceptDriftStream
     (Agrawal function 0 -> 2, width 100 around the position) predicted prequentially by a river Hoeffding tree
     (trained on 5,000 examples of function 0 first). Ours: each labelled
     prediction goes through services.monitor's Monitor (on_prediction + on_example on a dict join table,
     the fraud spec's concept_drift detector via make_detector; also its Page-Hinkley variant); a
     detection = loopline_monitor_concept_drift_detections_total going up. river: the same detector class
     and parameters updated in-process with the same 0/1 errors. Delay: first detection at or after the
     change minus its position (mean over the seeds that detected it); false alarms: detections before it.
 other load: CPU used by everything else on the machine meanwhile, in cores (of 2): above ~0.2 the
     timings are disturbed."""


def log(msg: str = "") -> None:
    print(msg, flush=True)


def load_note(used: dict[str, float | None], wall: float) -> str:
    other = used.get("other")
    return f"{other / wall:.2f}" if other is not None and wall > 0 else "-"


# ---------------------------------------------------------------- the champion and its predictions

@dataclass
class Champion:
    spec: Any
    version: Any  # ModelVersion
    reference: dict[str, Any]
    inputs: list[str]
    examples: list[dict[str, Any]]
    vectors: list[dict[str, float | None]]
    scores: list[float]


def make_champion(spec, n_examples: int, seed: int, work: Path) -> Champion:
    """`logreg` fitted on the first 80 % of n fraud examples, its reference statistics, and every
    example's model inputs (the serving log's vector) and score."""
    from examples.fraud.training import fraud_training_examples
    from shared.events import DataRange, Lineage, ModelVersion
    from shared.modeling import (
        Vectorizer, build_model, encode_label, model_classes, predict, reference_statistics,
    )
    from shared.registry import ArtifactStore, artifact_key, code_version, digest, dump_model, package_versions

    examples = fraud_training_examples(n_examples, seed=seed, spec=spec)
    vec = Vectorizer(spec)
    X = vec.matrix((e["features"], e["data"]) for e in examples)
    y = np.array([encode_label(spec, e["label"]) for e in examples])
    cut = int(len(examples) * 0.8)
    candidate = next(m for m in spec.models if m.name == MODEL_NAME)
    model = build_model(candidate, spec).fit(X[:cut], y[:cut])
    holdout = predict(model, "sklearn", spec.label.type, X[cut:])
    reference = reference_statistics(vec, X[:cut], y[:cut], holdout)
    scores = [float(s) for s in predict(model, "sklearn", spec.label.type, X).scores]
    vectors = [{c: (None if v is None or v != v else float(v))
                for c, v in zip(vec.columns, vec.values(e["features"], e["data"]))} for e in examples]
    data = dump_model(model, "sklearn")
    store = ArtifactStore(str(work / "artifacts"))
    uri = store.put(artifact_key(spec.name, MODEL_NAME, MODEL_VERSION, "sklearn"), data)
    now = datetime.now(UTC)
    version = ModelVersion(
        name=MODEL_NAME, version=MODEL_VERSION, stage="champion", library="sklearn", algorithm="logistic_regression",
        task=spec.label.type, artifact_uri=uri, sha256=digest(data), signature=None, metrics={},
        evaluation="holdout", trained_at=now, updated_at=now, params=dict(candidate.params), inputs=vec.columns,
        classes=model_classes(spec),
        lineage=Lineage(feature_hash=spec.feature_hash(), spec_name=spec.name,
                        data=DataRange(start=examples[0]["occurred_at"], end=examples[cut - 1]["occurred_at"],
                                       examples=cut),
                        code_version=code_version(), packages=package_versions()),
        reference=reference, reason="bench.monitor: registered by hand")
    return Champion(spec, version, reference, vec.columns, examples, vectors, scores)


def prediction_record(ch: Champion, i: int) -> dict[str, Any]:
    """The i-th Prediction record (the examples cycled, event id b-<i>)."""
    from shared.events import SCHEMA_VERSION

    k = i % len(ch.examples)
    ex, score = ch.examples[k], ch.scores[k]
    return {"prediction_id": f"p-{i}", "type": "prediction", "schema_version": SCHEMA_VERSION, "event_id": f"b-{i}",
            "occurred_at": ex["occurred_at"], "predicted_at": ex["occurred_at"], "entity": ex["entity"],
            "model_name": MODEL_NAME, "model_version": MODEL_VERSION, "variant": "champion", "score": score,
            "predicted": score >= ch.spec.serving.threshold, "proba": None, "features": ch.vectors[k],
            "feature_hash": ch.spec.feature_hash(), "state_event_time": None, "latency_ms": 1.0}


def example_record(ch: Champion, i: int) -> dict[str, Any]:
    """The i-th prediction's TrainingExample (its label)."""
    return {**ch.examples[i % len(ch.examples)], "event_id": f"b-{i}"}


def labelled(i: int, share: float) -> bool:
    """Whether prediction i gets its label (spread evenly: share 0.5 labels every second one)."""
    return math.floor((i + 1) * share) > math.floor(i * share)


# ---------------------------------------------------------------- (a) the monitor on a real broker

def serving_rps(args: argparse.Namespace, work: Path) -> tuple[float | None, str]:
    """Loopline serving's one-row req/s at 16 connections: given, or measured now by bench.serving."""
    if args.serving_rps is not None:
        return args.serving_rps, "given with --serving-rps"
    out = work / "bench-serving.log"
    argv = [sys.executable, "-m", "bench.serving", "--servers", "loopline", "--connections", "16",
            "--duration", str(args.serving_duration), "--warmup", "4", "--json"]
    log(f"(a) serving's figure: {' '.join(argv[1:])} (output in {out}) ...")
    with open(out, "w") as f:
        done = subprocess.run(argv, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, check=False)
    lines = out.read_text(errors="replace").splitlines()
    for line in reversed(lines):
        if line.startswith("{"):
            result = json.loads(line)
            for r in result.get("rows", []):
                if r["server"] == "loopline" and r["connections"] == 16 and r["rows"] == 1:
                    other = r["cpu_s"].get("other")
                    load = f"{other / r['wall_s']:.2f}" if other is not None and r.get("wall_s") else "-"
                    return r["rps"], (f"bench.serving in this run ({args.serving_duration:g} s, other load {load} "
                                      f"cores; server CPU {1e6 * r['cpu_s']['server'] / r['requests']:,.0f} µs/req)")
    return None, f"bench.serving failed (exit {done.returncode}); see {out}"


def part_a(args: argparse.Namespace, ch: Champion, work: Path) -> dict[str, Any]:
    from deploy.free_ports import free_port
    from deploy.procs import ServiceProcess
    from shared.kafka import OutRecord, ensure_topics, make_producer, send_batched
    from shared.topics import Topics

    kafka = require_kafka("bench.monitor")
    rps, rps_source = serving_rps(args, work)
    prefix = unique_prefix("monitor")
    topics = Topics(prefix)
    n, share = args.predictions, args.label_share
    n_labels = sum(1 for i in range(n) if labelled(i, share))

    async def preload() -> None:
        await ensure_topics(kafka, topics)
        producer = make_producer(kafka, max_request_size=4 << 20)
        await producer.start()
        try:
            await producer.send_and_wait(topics["models"], ch.version.model_dump_json().encode(),
                                         key=ch.version.key.encode())
            for start in range(0, n, 10_000):
                records = []
                for i in range(start, min(n, start + 10_000)):
                    p = prediction_record(ch, i)
                    records.append(OutRecord(topics["predictions"], p["entity"].encode(), orjson.dumps(p)))
                    if labelled(i, share):
                        ex = example_record(ch, i)
                        records.append(OutRecord(topics["training-examples"], ex["entity"].encode(),
                                                 orjson.dumps(ex)))
                await asyncio.gather(*await send_batched(producer, records))
        finally:
            await producer.stop()

    t0 = time.perf_counter()
    event_loop_runner()(preload())
    log(f"(a) {n:,} predictions and {n_labels:,} labels produced in {time.perf_counter() - t0:.1f} s "
        f"(prefix {prefix})")
    port = free_port()
    proc = ServiceProcess("services.monitor", {
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers, "LOOPLINE_TOPIC_PREFIX": prefix,
        "LOOPLINE_SPEC_PATH": str(SPEC_PATH), "MONITOR_PORT": str(port), "MONITOR_DATA_DIR": str(work / "monitor"),
        "LOOPLINE_LOG_LEVEL": "WARNING"}, port=port, log_dir=work, ready_timeout=180)
    group = topics.group("monitor", f"spec-{ch.spec.name}")
    sources = [topics[name] for name in ("predictions", "training-examples", "features")]
    bpid = broker_pid()
    samples: list[tuple[float, int, int, float | None, float | None, float | None]] = []

    async def watch() -> None:
        async with GroupOffsets(kafka, group, sources) as offsets:
            deadline = time.monotonic() + args.timeout
            while True:
                committed, end = await offsets.read()
                samples.append((time.monotonic(), committed, end, proc_cpu_s(proc.proc.pid), proc_cpu_s(bpid),
                                machine_busy_s()))
                if end and committed >= end:
                    return
                if not proc.running:
                    raise RuntimeError(f"the monitor exited: {proc.tail()}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the monitor committed {committed:,} of {end:,} records in {args.timeout} s")
                await asyncio.sleep(0.1)

    started = time.monotonic()
    proc.start(wait_ready=False)
    try:
        event_loop_runner()(watch())
        metrics_text = httpx.get(f"{proc.url}/metrics", timeout=10).text
    finally:
        proc.stop()
    first = next(s for s in samples if s[1] > 0)
    last = samples[-1]
    records = last[1] - first[1]
    seconds = last[0] - first[0]
    total = n + n_labels
    pred_in_interval = records * n / total  # the backlog is drained in a mix; its share of predictions
    cpu = (last[3] - first[3]) if last[3] is not None and first[3] is not None else None
    broker = (last[4] - first[4]) if last[4] is not None and first[4] is not None else None
    other = None
    if last[5] is not None and first[5] is not None and cpu is not None:
        other = max(0.0, (last[5] - first[5]) - cpu - (broker or 0.0)) / seconds
    counted = {
        "predictions_ok": metric_value(metrics_text, "loopline_monitor_records_total", topic="predictions",
                                       outcome="ok"),
        "labels_ok": metric_value(metrics_text, "loopline_monitor_records_total", topic="training-examples",
                                  outcome="ok"),
        "labelled": metric_value(metrics_text, "loopline_monitor_labelled_predictions_total", variant="champion"),
        "invalid": sum(v for k in ("predictions", "training-examples")
                       for v in [metric_value(metrics_text, "loopline_monitor_records_total", topic=k,
                                              outcome="invalid") or 0.0]),
    }
    alerts = event_loop_runner()(_end(kafka, topics["alerts"]))
    return {"predictions": n, "labels": n_labels, "records": records, "seconds": seconds,
            "startup_s": first[0] - started, "records_per_s": records / seconds,
            "predictions_per_s": pred_in_interval / seconds,
            "cpu_us_per_record": 1e6 * cpu / records if cpu is not None else None,
            "cpu_us_per_prediction": 1e6 * cpu / pred_in_interval if cpu is not None else None,
            "monitor_cores": cpu / seconds if cpu is not None else None,
            "broker_us_per_record": 1e6 * broker / records if broker is not None else None,
            "other_load": other, "serving_rps": rps, "serving_source": rps_source, "counted": counted,
            "alerts": alerts, "log": str(proc.log_path)}




async def _end(kafka, topic: str) -> int:
    async with OffsetWatcher(kafka) as watch:
        return await watch.end(topic)


# ---------------------------------------------------------------- (b) the update cost in-process

class DictView(dict):
    """A join-table partition as a dict (services.monitor.service works on get/set/delete/items_from)."""

    def set(self, key: bytes, value: bytes) -> None:
        self[key] = value

    def delete(self, key: bytes) -> None:
        self.pop(key, None)

    def items_from(self, start: bytes):
        return iter(sorted((k, v) for k, v in self.items() if k >= start))


def new_monitor(spec, champion: Any | None = None):
    from services.monitor.config import MonitorSettings
    from services.monitor.metrics import MonitorMetrics
    from services.monitor.service import Monitor
    from shared.registry import Registry

    registry = Registry()
    if champion is not None:
        registry.apply(champion)
    return Monitor(spec, MonitorSettings(), registry, MonitorMetrics())


def part_b(args: argparse.Namespace, ch: Champion) -> dict[str, Any]:
    from services.monitor.domain import InputWindows

    size = ch.spec.monitoring.data_drift.window_size
    n = args.b_predictions
    vectors = [ch.vectors[i % len(ch.vectors)] for i in range(n)]
    scores = [ch.scores[i % len(ch.scores)] for i in range(n)]
    meter = CpuMeter({}).start()
    t_wall = time.monotonic()
    add_us, close_ms = [], []
    windows = InputWindows(ch.reference, ch.inputs, size)
    inputs = len(windows.readers)
    for _ in range(args.rounds):
        closes = []
        t0 = time.perf_counter()
        for v, s in zip(vectors, scores):
            if windows.add(v, s):
                c0 = time.perf_counter()
                windows.close()
                closes.append(time.perf_counter() - c0)
        total = time.perf_counter() - t0
        add_us.append(1e6 * (total - sum(closes)) / n)
        close_ms.append(1e3 * sum(closes) / max(1, len(closes)))
    # the whole per-prediction handler, for information (windows + join-table work on a dict)
    monitor = new_monitor(ch.spec, ch.version)
    view = DictView()
    records = [prediction_record(ch, i) for i in range(n)]
    handler_us = []
    for _ in range(args.rounds):
        view.clear()
        t0 = time.perf_counter()
        for p in records:
            monitor.on_prediction(view, p)
        handler_us.append(1e6 * (time.perf_counter() - t0) / n)
    used = meter.stop()
    add = float(np.median(add_us))
    return {"predictions": n, "inputs": inputs, "window": size, "add_us": add, "add_us_all": add_us,
            "per_input_us": add / inputs, "close_ms": float(np.median(close_ms)),
            "per_input_with_close_us": (add + float(np.median(close_ms)) * 1e3 / size) / inputs,
            "handler_us": float(np.median(handler_us)), "other_load": load_note(used, time.monotonic() - t_wall)}


# ---------------------------------------------------------------- (c) data drift against Evidently and NannyML

DRIFT_TRUTH = {0: "mean +0.5 sd", 5: "lognormal sigma 0.5 -> 0.8", 6: "uniform shifted by +0.2",
               11: "exponential scale 1 -> 1.6", 12: "10% moved to +4 sd", 16: "mean +0.05 sd (slight)"}


def drift_data(rows: int, features: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Reference and current matrices (rows x features; column j normal, lognormal, uniform or exponential
    by j % 4), the current one drifted in the DRIFT_TRUTH columns."""
    rng = np.random.default_rng(seed)

    def column(j: int, n: int, current: bool) -> np.ndarray:
        kind, drifted = j % 4, current and j in DRIFT_TRUTH
        if kind == 0:
            x = rng.normal({0: 0.5, 16: 0.05}.get(j, 0.0) if drifted else 0.0, 1.0, n)
            if drifted and j == 12:
                moved = rng.random(n) < 0.1
                x[moved] = rng.normal(4.0, 1.0, int(moved.sum()))
            return x
        if kind == 1:
            return rng.lognormal(0.0, 0.8 if drifted else 0.5, n)
        if kind == 2:
            low = 0.2 if drifted else 0.0
            return rng.uniform(low, low + 1.0, n)
        return rng.exponential(1.6 if drifted else 1.0, n)

    reference = np.column_stack([column(j, rows, False) for j in range(features)])
    current = np.column_stack([column(j, rows, True) for j in range(features)])
    return reference, current, [f"f{j:02d}" for j in range(features)]


def ours_drift(reference: np.ndarray, current: np.ndarray, columns: list[str]) -> tuple[float, float, list[dict]]:
    """Seconds for the reference side (edges and counts), for the live side (sketch, add_many, statistics),
    and the statistics per column."""
    from services.monitor.domain import Sketch
    from shared.modeling import quantile_bins

    t0 = time.perf_counter()
    refs = []
    for j in range(len(columns)):
        col = reference[:, j]
        present = col[~np.isnan(col)]
        edges, counts = quantile_bins(present)
        refs.append({"kind": "numeric", "edges": edges, "counts": counts,
                     "missing": 1.0 - present.size / col.size})
    t1 = time.perf_counter()
    out = []
    for j, name in enumerate(columns):
        sketch = Sketch(name, refs[j], reference.shape[0])
        sketch.add_many(current[:, j])
        out.append(sketch.statistics())
    return t1 - t0, time.perf_counter() - t1, out


def run_peer(name: str, data: Path, rounds: int) -> dict[str, Any]:
    """One drift peer in its own venv (built on first use); {'error': ...} if it cannot be installed or run."""
    from bench.serving import ensure_peer_venv

    try:
        bin_dir = ensure_peer_venv(name)
    except SystemExit as exc:  # ensure_peer_venv exits with the install log's tail
        return {"error": f"not installed: {exc}"}
    done = subprocess.run([str(bin_dir / "python"), str(ROOT / "bench" / "peers" / "drift_peer.py"), name, str(data),
                           str(rounds)], capture_output=True, text=True, check=False)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"error": f"failed (exit {done.returncode}): {(done.stderr or done.stdout)[-1500:]}"}
    return json.loads(lines[-1])


def part_c(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    reference, current, columns = drift_data(args.rows, 20, args.seed)
    data = work / "drift.npz"
    np.savez(data, reference=reference, current=current, columns=np.array(columns))
    meter = CpuMeter({}).start()
    t_wall = time.monotonic()
    ref_s, live_s, stats = [], [], None
    for _ in range(args.rounds):
        r, live, stats = ours_drift(reference, current, columns)
        ref_s.append(r)
        live_s.append(live)
    ours_load = load_note(meter.stop(), time.monotonic() - t_wall)
    peers = {}
    for name in PEERS:
        meter = CpuMeter({}).start()
        t_wall = time.monotonic()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        peers[name] = run_peer(name, data, args.rounds)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        used = meter.stop()
        if used.get("other") is not None:  # the peer (our child, reaped) is not other load
            used["other"] = max(0.0, used["other"] - (after.ru_utime + after.ru_stime - before.ru_utime
                                                      - before.ru_stime))
        peers[name]["other_load"] = load_note(used, time.monotonic() - t_wall)
        if "error" in peers[name]:
            log(f"(c) {name}: {peers[name]['error']}")
    return {"columns": columns, "ref_s": float(np.median(ref_s)), "live_s": float(np.median(live_s)),
            "total_s": float(np.median(np.add(ref_s, live_s))), "stats": stats, "peers": peers,
            "other_load": ours_load}


# ---------------------------------------------------------------- (d) concept drift

@dataclass
class Stream:
    name: str
    position: int | None  # where the change is (None: no change)
    length: int


def stream_errors(kind: str, seed: int, length: int, position: int) -> tuple[list[bool], list[bool]]:
    """(predicted, label) pairs of one stream as two lists; an error is predicted != label."""
    rng = np.random.default_rng(seed)
    if kind.startswith("bernoulli"):
        before, after = {"bernoulli_step": (0.1, 0.3), "bernoulli_small": (0.2, 0.25),
                         "bernoulli_none": (0.1, 0.1)}[kind]
        p = np.where(np.arange(length) < position, before, after)
        errors = rng.random(length) < p
        labels = rng.random(length) < 0.5
        return [bool(lab != e) for lab, e in zip(labels, errors)], [bool(lab) for lab in labels]
    from river import tree
    from river.datasets import synth

    stream = synth.ConceptDriftStream(stream=synth.Agrawal(classification_function=0, seed=seed),
                                      drift_stream=synth.Agrawal(classification_function=2, seed=seed),
                                      position=position, width=100, seed=seed)  # width 1 overflows river's sigmoid
    model = tree.HoeffdingTreeClassifier()
    # trained beforehand on the first concept (another seed), so the stream's errors before the change
    # are the model's steady ones, not its learning curve (which a detector rightly sees as a change)
    for x, y in synth.Agrawal(classification_function=0, seed=seed + 1000).take(WARM_UP):
        model.learn_one(x, y)
    predicted, labels = [], []
    for x, y in stream.take(length):
        guess = model.predict_one(x)
        predicted.append(bool(guess) if guess is not None else False)
        labels.append(bool(y))
        model.learn_one(x, y)
    return predicted, labels


def river_detector(spec):
    from river import drift

    c = spec.monitoring.concept_drift
    return {"adwin": lambda: drift.ADWIN(delta=c.delta),
            "page_hinkley": lambda: drift.PageHinkley(delta=c.delta)}[c.detector]()


def detections_ours(spec, predicted: list[bool], labels: list[bool]) -> list[int]:
    """Indexes at which the monitor's concept-drift counter went up, feeding it labelled predictions."""
    monitor = new_monitor(spec)
    counter = monitor.metrics.registry
    view = DictView()
    found, seen = [], 0.0
    t = 1_767_225_600.0
    for i, (guess, label) in enumerate(zip(predicted, labels)):
        at = datetime.fromtimestamp(t + i, UTC).isoformat()
        monitor.on_prediction(view, {"event_id": f"s{i}", "model_name": "m", "model_version": 1,
                                     "variant": "champion", "score": float(guess), "predicted": guess,
                                     "predicted_at": at})
        monitor.on_example(view, {"event_id": f"s{i}", "label": label, "labelled_at": at,
                                  "data": {"country": "DE", "channel": "web"}})
        now = counter.get_sample_value("loopline_monitor_concept_drift_detections_total") or 0.0
        if now > seen:
            found.append(i)
            seen = now
    return found


def detections_river(spec, predicted: list[bool], labels: list[bool]) -> list[int]:
    detector = river_detector(spec)
    found = []
    for i, (guess, label) in enumerate(zip(predicted, labels)):
        detector.update(float(guess != label))
        if detector.drift_detected:
            found.append(i)
    return found


def part_d(args: argparse.Namespace, spec) -> list[dict[str, Any]]:
    from shared.spec import parse_spec

    text = SPEC_PATH.read_text()
    old = "concept_drift: {detector: adwin, delta: 0.002}"
    assert old in text, "the fraud spec's concept_drift line changed"
    specs = {"adwin": spec,
             "page_hinkley": parse_spec(text.replace(old, "concept_drift: {detector: page_hinkley, delta: 0.005}"))}
    length, position = args.stream_length, args.stream_length // 2
    streams = [("bernoulli_step", f"Bernoulli errors 0.10 -> 0.30 at {position:,}", position),
               ("bernoulli_small", f"Bernoulli errors 0.20 -> 0.25 at {position:,}", position),
               ("agrawal", f"ConceptDriftStream Agrawal F0 -> F2 at {position:,}, Hoeffding tree", position),
               ("bernoulli_none", "Bernoulli errors 0.10, no change", None)]
    rows = []
    for kind, label, pos in streams:
        data = [stream_errors(kind, seed, length, pos if pos is not None else length) for seed in range(args.seeds)]
        for det, s in specs.items():
            meter = CpuMeter({}).start()
            t_wall = time.monotonic()
            result = {}
            for who, fn in (("ours", detections_ours), ("river", detections_river)):
                delays, false_alarms, missed = [], 0, 0
                for predicted, labels in data:
                    found = fn(s, predicted, labels)
                    cut = pos if pos is not None else length
                    false_alarms += sum(1 for i in found if i < cut)
                    after = [i for i in found if i >= cut]
                    if pos is not None:
                        if after:
                            delays.append(after[0] - pos)
                        else:
                            missed += 1
                result[who] = {"delay": float(np.mean(delays)) if delays else None, "false_alarms": false_alarms,
                               "missed": missed}
            rows.append({"stream": label, "detector": f"{det} (delta {s.monitoring.concept_drift.delta:g})",
                         "drift": pos is not None, "seeds": args.seeds, **result,
                         "other_load": load_note(meter.stop(), time.monotonic() - t_wall)})
            log(f"(d) {label}, {det}: ours {result['ours']}, river {result['river']}")
    return rows


# ---------------------------------------------------------------- report

def fmt(v: float | None, spec: str = ",.0f") -> str:
    return "-" if v is None else format(v, spec)


def report(args: argparse.Namespace, res: dict[str, Any]) -> list[dict[str, Any]]:
    goals = []
    if "a" in res:
        a = res["a"]
        log(f"\n(a) The monitor process draining {a['predictions']:,} predictions + {a['labels']:,} labels "
            f"(started in {a['startup_s']:.1f} s before its first commit):")
        log(table(["figure", "value"], [
            ["records drained (committed over the interval)", f"{a['records']:,}"],
            ["seconds", f"{a['seconds']:.1f}"],
            ["records/s", fmt(a["records_per_s"])],
            ["predictions/s (with their labels)", fmt(a["predictions_per_s"])],
            ["monitor CPU µs per prediction (labels included)", fmt(a["cpu_us_per_prediction"])],
            ["monitor CPU µs per record", fmt(a["cpu_us_per_record"])],
            ["monitor cores busy", fmt(a["monitor_cores"], ".2f")],
            ["broker CPU µs per record", fmt(a["broker_us_per_record"])],
            ["other load (cores)", fmt(a["other_load"], ".2f")],
            ["serving 16 conn 1-row req/s", fmt(a["serving_rps"])],
        ]))
        log(f"   serving's figure: {a['serving_source']}")
        c = a["counted"]
        log(f"   monitor's /metrics afterwards: predictions ok {fmt(c['predictions_ok'])}, labels ok "
            f"{fmt(c['labels_ok'])}, labelled predictions {fmt(c['labelled'])}, invalid {fmt(c['invalid'])}; "
            f"alert records written {a['alerts']}")
        ok = (c["predictions_ok"] == a["predictions"] and c["labels_ok"] == a["labels"] and not c["invalid"])
        if a["serving_rps"]:
            ratio = a["predictions_per_s"] / a["serving_rps"]
            goals.append({"goal": "(a) monitor predictions/s >= serving's 16-conn 1-row req/s",
                          "value": f"{a['predictions_per_s']:,.0f} vs {a['serving_rps']:,.0f} ({ratio:.1f}x)",
                          "pass": ratio >= 1 and ok})
        goals.append({"goal": "(a) every record read as ok", "value": "yes" if ok else "NO", "pass": ok})
    if "b" in res:
        b = res["b"]
        log(f"\n(b) InputWindows.add in-process over {b['predictions']:,} prediction vectors, {b['inputs']} "
            f"monitored "
            f"inputs + the score, window {b['window']:,} (other load {b['other_load']} cores):")
        log(table(["figure", "value"], [
            ["µs per prediction (add; median of rounds)", f"{b['add_us']:.1f}"],
            ["rounds", " / ".join(f"{x:.1f}" for x in b["add_us_all"])],
            ["µs per input per prediction", f"{b['per_input_us']:.2f}"],
            ["window close (statistics of every input), ms", f"{b['close_ms']:.2f}"],
            ["µs per input per prediction, closes amortized", f"{b['per_input_with_close_us']:.2f}"],
            ["Monitor.on_prediction, µs per prediction (info)", f"{b['handler_us']:.1f}"],
        ]))
        goals.append({"goal": f"(b) update <= {GOAL_B_US:g} µs per input per prediction",
                      "value": f"{b['per_input_us']:.2f} µs ({b['per_input_with_close_us']:.2f} with closes)",
                      "pass": b["per_input_us"] <= GOAL_B_US})
    if "c" in res:
        c = res["c"]
        peers = c["peers"]
        log(f"\n(c) Data drift, {args.rows:,} reference + {args.rows:,} current rows x 20 features "
            f"(median of {args.rounds} rounds):")
        rows = [["Loopline (reference edges + sketches)", f"{c['total_s']:.3f}",
                 f"ref {c['ref_s']:.3f} + live {c['live_s']:.3f}", "PSI > 0.2", c["other_load"]]]
        for name in PEERS:
            p = peers[name]
            if "error" in p:
                rows.append([name, "-", "-", p["error"][:80], p.get("other_load", "-")])
            else:
                rows.append([f"{name} {p['version']}", f"{float(np.median(p['times'])):.3f}",
                             " / ".join(f"{t:.2f}" for t in p["times"]), p["method"], p["other_load"]])
        log(table(["tool", "seconds", "detail", "drift rule", "other load"], rows))
        flags = []
        for j, name in enumerate(c["columns"]):
            s = c["stats"][j]
            line = [name, DRIFT_TRUTH.get(j, "-"),
                    f"{s['psi']:.3f}" + (" *" if s["psi"] > 0.2 else ""),
                    f"{s['ks_pvalue']:.1e}" + (" *" if s["ks_pvalue"] < 0.01 else "")]
            for peer in PEERS:
                p = peers[peer]
                if "error" in p:
                    line.append("n/a")
                else:
                    line.append(f"{p['values'].get(name, float('nan')):.3f}" + (" *" if name in p["drifted"] else ""))
            flags.append(line)
        log("   per feature (* = flagged as drifted):")
        log(table(["feature", "drift injected", "ours PSI", "ours KS p", "evidently", "nannyml"], flags))
        nanny = peers.get("nannyml", {})
        if "times" in nanny:
            t_n = float(np.median(nanny["times"]))
            goals.append({"goal": f"(c) drift <= {GOAL_C_RATIO:g}x NannyML's time",
                          "value": f"{c['total_s'] / t_n:.2f}x (live side alone {c['live_s'] / t_n:.2f}x)",
                          "pass": c["total_s"] / t_n <= GOAL_C_RATIO})
        else:
            goals.append({"goal": f"(c) drift <= {GOAL_C_RATIO:g}x NannyML's time", "value": "NannyML unavailable",
                          "pass": False})
    if "d" in res:
        log(f"\n(d) Concept drift, {args.seeds} seeds per stream of {args.stream_length:,} labelled predictions:")
        rows = []
        worse = False
        for r in res["d"]:
            o, v = r["ours"], r["river"]
            rows.append([r["stream"], r["detector"], fmt(o["delay"], ",.1f"), fmt(v["delay"], ",.1f"),
                         f"{o['missed']}/{v['missed']}" if r["drift"] else "-", o["false_alarms"], v["false_alarms"],
                         r["other_load"]])
            if r["drift"] and (o["missed"] > v["missed"] or
                               (o["delay"] is not None and v["delay"] is not None and o["delay"] > v["delay"])):
                worse = True
            worse = worse or o["false_alarms"] > v["false_alarms"]
        log(table(["stream", "detector", "delay ours", "delay river", "missed o/r", "false ours",
                   "false river", "other load"], rows))
        goals.append({"goal": "(d) delay no worse than river in-process, no more false alarms",
                      "value": "worse somewhere" if worse else "equal or better on every stream", "pass": not worse})
    log("\nGoals:")
    log(table(["goal", "value", "verdict"],
              [[g["goal"], g["value"], "PASS" if g["pass"] else "MISS"] for g in goals]))
    return goals


# ---------------------------------------------------------------- main

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.monitor", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="a,b,c,d", help="which parts (default %(default)s; a needs a broker)")
    ap.add_argument("--predictions", type=int, default=60_000,
                    help="(a) predictions pre-loaded (default %(default)s)")
    ap.add_argument("--label-share", type=float, default=0.5,
                    help="(a) share of predictions whose label is pre-loaded too (default %(default)s)")
    ap.add_argument("--examples", type=int, default=20_000,
                    help="fraud examples the champion is fitted on (80 %%) and the predictions cycle through")
    ap.add_argument("--serving-rps", type=float, default=None,
                    help="(a) serving's 16-connection one-row req/s to compare with (default: measure it now "
                         "with bench.serving on the same broker)")
    ap.add_argument("--serving-duration", type=float, default=10.0, help="(a) seconds of that wrk run")
    ap.add_argument("--timeout", type=float, default=600.0, help="(a) longest drain (default %(default)s s)")
    ap.add_argument("--b-predictions", type=int, default=20_000, help="(b) predictions per round")
    ap.add_argument("--rows", type=int, default=100_000, help="(c) reference and current rows (default %(default)s)")
    ap.add_argument("--rounds", type=int, default=3, help="(b), (c) rounds (default %(default)s)")
    ap.add_argument("--seeds", type=int, default=5, help="(d) seeds per stream (default %(default)s)")
    ap.add_argument("--stream-length", type=int, default=10_000, help="(d) labelled predictions per stream")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, data)")
    ap.add_argument("--json", action="store_true", help="also print the results as one JSON object (last line)")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a goal is missed")
    args = ap.parse_args(argv)
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if not args.parts or set(args.parts) - set(PARTS):
        ap.error(f"--parts: a comma-separated subset of {','.join(PARTS)}")
    if not 0 <= args.label_share <= 1 or args.predictions < 1 or args.rounds < 1 or args.seeds < 1:
        ap.error("need 0 <= --label-share <= 1, --predictions, --rounds and --seeds >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sigterm_as_exit()
    if "a" in args.parts:
        require_kafka("bench.monitor")
    from bench.serving import cpu_model
    from shared.spec import load_spec

    spec = load_spec(SPEC_PATH)
    work = Path(tempfile.mkdtemp(prefix="loopline-bench-monitor."))
    started = time.perf_counter()
    log(f"monitor bench: {machine()}, {cpu_model()}, load average {os.getloadavg()[0]:.2f}; parts "
        f"{','.join(args.parts)}; work dir {work}")
    res: dict[str, Any] = {}
    failed = False
    ch = None
    if {"a", "b"} & set(args.parts):
        t0 = time.perf_counter()
        ch = make_champion(spec, args.examples, args.seed, work)
        log(f"champion {MODEL_NAME} v{MODEL_VERSION} fitted on {int(len(ch.examples) * 0.8):,} of "
            f"{len(ch.examples):,} "
            f"fraud examples, with reference statistics, in {time.perf_counter() - t0:.1f} s")
    steps = {"a": lambda: part_a(args, ch, work), "b": lambda: part_b(args, ch), "c": lambda: part_c(args, work),
             "d": lambda: part_d(args, spec)}
    for part in PARTS:
        if part not in args.parts:
            continue
        log(f"\n== ({part}) load average {os.getloadavg()[0]:.2f}")
        try:
            res[part] = steps[part]()
        except (RuntimeError, TimeoutError, httpx.HTTPError, OSError, ValueError, StopIteration) as exc:
            failed = True
            log(f"({part}) FAILED: {type(exc).__name__}: {exc}")
    log(f"\nmeasured in {time.perf_counter() - started:.0f} s")
    goals = report(args, res)
    log(f"\nMachine: {machine()}, {cpu_model()}; load average at the end {os.getloadavg()[0]:.2f}")
    log("\n" + EXPLAIN.replace("<EXAMPLES>", f"{args.examples:,}").replace("<N>", f"{args.predictions:,}")
        .replace("<S>", f"{args.label_share:g}").replace("<ROUNDS>", str(args.rounds))
        .replace("<B_N>", f"{args.b_predictions:,}").replace("<ROWS>", f"{args.rows:,}")
        .replace("<SEEDS>", str(args.seeds)))
    if args.json:
        print(json.dumps({"results": res, "goals": goals, "config": vars(args), "machine": machine()}, default=str))
    if args.keep or failed:
        log(f"work directory kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed or (args.strict and any(not g["pass"] for g in goals)) else 0


if __name__ == "__main__":
    sys.exit(main())
