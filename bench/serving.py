"""Serving latency and throughput: the same fitted scikit-learn pipeline served four ways, one server
at a time, under the same load generator (wrk): Loopline serving (state lookup, request-time features,
prediction log), `mlflow models serve`, MLServer (mlserver-sklearn) and a plain FastAPI app calling
predict_proba on a DataFrame (bench/peers/plain_app.py), at 1 and 16 connections with one-row and
100-row requests.

    deploy/with-kafka.sh .venv/bin/python -m bench.serving [--duration S] [--skip-loopline] [--json]
    .venv/bin/python -m bench.serving --skip-loopline       (the peers alone need no broker)

The peers run in their own virtualenvs under bench/.peers/ (git-ignored), built on first use from the
pinned requirements in bench/peers/*.txt; the plain app runs in the main venv. wrk comes from PATH,
else from Debian's package (apt-get install wrk). Each server runs alone as a separate process and
is stopped before the next starts; wrk, the server and (for Loopline) the broker and the feature
worker share this machine's cores.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import math
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench.common import (
    ROOT, CpuMeter, OffsetWatcher, broker_pid, event_loop_runner, machine, proc_cpu_s, require_kafka,
    sigterm_as_exit, table, unique_prefix,
)
from deploy.free_ports import free_port
from deploy.procs import ServiceProcess, wait_until

SPEC_PATH = ROOT / "examples" / "fraud" / "pipeline.yaml"
PEERS_DIR = ROOT / "bench" / ".peers"  # git-ignored: the peers' virtualenvs
REQUIREMENTS_DIR = ROOT / "bench" / "peers"
CATEGORICAL = ["merchant_category", "country", "channel"]
MODEL_NAME, MODEL_VERSION = "logreg", 1  # the fraud spec's sklearn logistic-regression candidate
SERVERS = ("loopline", "mlflow", "mlserver", "plain")
LABELS = {"loopline": "Loopline serving", "mlflow": "mlflow models serve", "mlserver": "MLServer (sklearn)",
          "plain": "plain FastAPI"}
GOAL_PEERS = ("mlflow", "mlserver")
SCORE_TOLERANCE = 1e-9

EXPLAIN = """\
How it is measured:
 * The pipeline: ColumnTransformer(num: SimpleImputer(median) + StandardScaler on amount and the spec's 13
   features; cat: OneHotEncoder(handle_unknown="ignore") on merchant_category, country, channel) +
   LogisticRegression(max_iter=1000), fitted in the main venv on fraud training examples made with the real
   feature engine (examples/fraud/training.py). The imputer is there because a user's first transaction has
   no 24 h mean/std/min/max, last amount or time since last: LogisticRegression refuses NaN.
 * Every server gets the same fitted pipeline: the plain app and Loopline load its skops artifact,
   MLServer a joblib dump, MLflow an mlflow.sklearn model saved from that dump in the MLflow venv (same
   scikit-learn 1.9.1, numpy and pandas in every venv), with pyfunc_predict_fn="predict_proba".
 * Requests: the peers get the full row (14 numbers + 3 categories) in their own format (MLflow:
   dataframe_split on /invocations; MLServer: V2 inference protocol with the pandas codec and output
   predict_proba; plain: a JSON object, or a list for 100 rows). Loopline gets what its client sends, the
   raw event (user_id, amount, merchant_category, country, channel, ts) of a user with history, and
   computes the 13 features itself from its replica of the feature worker's state. One fixed body per
   (server, rows): the same row(s) for every server.
 * Before the timed runs each server's scores for the one-row and the 100-row body are checked against
   the pipeline's predict_proba in this process (within 1e-9); for Loopline also its features against
   the feature engine's request-time features (shared.features.FeatureStore.snapshot) of a replica of the
   same history.
 * Before each timed run Loopline's prediction log is drained (its /metrics: nothing pending), so a run does
   not pay for the previous run's backlog; the peers keep nothing to drain.
 * Load: wrk, closed loop, keep-alive: 1 connection with 1 thread (-t1 -c1), 16 connections with 2
   threads (-t2 -c16); WARMUP s of 16 connections (one row, then 100 rows) after start, then DURATION s
   per (connections, rows). p50/p99 from wrk --latency; requests/s = wrk's. Any non-2xx answer or
   socket error marks the run.
 * CPU per request: the server's process tree (MLflow's CLI and its uvicorn, MLServer and its inference
   worker) from /proc/<pid>/stat over each run / requests; wrk's from its rusage; for Loopline also the
   broker (the prediction log) and the feature worker. Other load: the machine's busy CPU minus all of
   these and this process.
 * Settings: each peer with its defaults except access logs off (MLflow's uvicorn: UVICORN_ACCESS_LOG=false;
   MLServer: debug=false; plain: --no-access-log), one worker process each (MLServer's default: one
   parallel inference worker beside the HTTP process)."""


# ---------------------------------------------------------------- tools and peer environments

def ensure_wrk() -> str:
    """wrk's path: from PATH, else installed from Debian's package, else exit with what to do."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("wrk is not on PATH: installing Debian's package (apt-get install -y wrk) ...", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "install", "-y", "-q", "wrk"], ["apt-get", "update", "-q"],
                    ["apt-get", "install", "-y", "-q", "wrk"]):
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if cmd[1] == "install" and done.returncode == 0:
                break
        found = shutil.which("wrk")
        if found:
            return found
        sys.exit(f"bench.serving: could not install wrk with apt-get:\n{done.stderr[-2000:]}")
    sys.exit("bench.serving: needs the load generator wrk (https://github.com/wg/wrk) on PATH: "
             "`apt-get install wrk` on Debian/Ubuntu, `brew install wrk` on macOS.")


def base_python() -> str:
    """The interpreter the main venv was made from (the peers' venvs use the same Python)."""
    return getattr(sys, "_base_executable", None) or sys.executable


def ensure_peer_venv(name: str) -> Path:
    """bench/.peers/<name>, a virtualenv with bench/peers/<name>.txt installed (rebuilt when the file
    changes); returns its bin directory."""
    requirements = REQUIREMENTS_DIR / f"{name}.txt"
    venv = PEERS_DIR / name
    marker = venv / ".requirements.sha256"
    wanted = hashlib.sha256(requirements.read_bytes()).hexdigest()
    if marker.exists() and marker.read_text().strip() == wanted:
        return venv / "bin"
    PEERS_DIR.mkdir(exist_ok=True)
    log = PEERS_DIR / f"{name}.install.log"
    print(f"building the {name} peer's virtualenv ({venv.relative_to(ROOT)}, from "
          f"{requirements.relative_to(ROOT)}; "
          f"log {log.relative_to(ROOT)}) ...", flush=True)
    t0 = time.perf_counter()
    with open(log, "w") as out:
        steps = [[base_python(), "-m", "venv", str(venv)],
                 [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--upgrade", "pip"],
                 [str(venv / "bin" / "python"), "-m", "pip", "install", "-r", str(requirements)]]
        for cmd in steps:
            if subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=False).returncode != 0:
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
                sys.exit(f"bench.serving: building the {name} peer's virtualenv failed "
                         f"({' '.join(cmd[-3:])}):\n{tail}")
    marker.write_text(wanted + "\n")
    print(f"  built in {time.perf_counter() - t0:.0f} s", flush=True)
    return venv / "bin"


# ---------------------------------------------------------------- the pipeline and its data

def numeric_columns(spec) -> list[str]:
    return ["amount", *(f.name for f in spec.features.definitions)]


def model_row(columns: list[str], features: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """One model input row: the event's own fields and its features by column name (None = missing)."""
    return {c: data[c] if c in data else features.get(c) for c in columns}


def frame(rows: list[dict[str, Any]], columns: list[str], numeric: list[str]):
    """The DataFrame the pipeline takes: numeric columns as float64 (missing = NaN), categories as text."""
    import pandas as pd

    df = pd.DataFrame(rows, columns=columns)
    df[numeric] = df[numeric].astype("float64")
    return df


def build_pipeline(numeric: list[str]):
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    num = Pipeline([("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
                    ("scale", StandardScaler())])
    columns = ColumnTransformer([("num", num, numeric),
                                 ("cat", OneHotEncoder(handle_unknown="ignore"), CATEGORICAL)])
    return Pipeline([("columns", columns), ("model", LogisticRegression(max_iter=1000))])


@dataclass
class Fitted:
    pipeline: Any
    columns: list[str]
    numeric: list[str]
    examples: int
    positives: int
    start: str
    end: str
    fit_s: float

    def scores(self, rows: list[dict[str, Any]]) -> list[float]:
        return self.pipeline.predict_proba(frame(rows, self.columns, self.numeric))[:, 1].tolist()


def fit(spec, n: int, seed: int) -> tuple[Fitted, Any]:
    """The pipeline fitted on n fraud training examples; also their DataFrame (MLflow's signature sample)."""
    from examples.fraud.training import fraud_training_examples
    from shared.modeling import encode_label

    examples = fraud_training_examples(n, seed=seed, spec=spec)
    numeric = numeric_columns(spec)
    columns = numeric + CATEGORICAL
    X = frame([model_row(columns, e["features"], e["data"]) for e in examples], columns, numeric)
    y = [encode_label(spec, e["label"]) for e in examples]
    pipeline = build_pipeline(numeric)
    t0 = time.perf_counter()
    pipeline.fit(X, y)
    fitted = Fitted(pipeline, columns, numeric, len(examples), sum(y), examples[0]["occurred_at"],
                    examples[-1]["occurred_at"], time.perf_counter() - t0)
    return fitted, X


def time_in_process(fitted: Fitted, row: dict[str, Any], calls: int = 300) -> dict[str, float]:
    """µs per call (median) of the pipeline's own predict_proba in this process: on a prepared one-row
    DataFrame, and including building that DataFrame from the row dict (what the plain app does)."""
    prepared = frame([row], fitted.columns, fitted.numeric)
    out = {}
    for name, call in (("predict_proba_us", lambda: fitted.pipeline.predict_proba(prepared)),
                       ("frame_and_predict_proba_us", lambda: fitted.scores([row]))):
        call()
        samples = []
        for _ in range(calls):
            t0 = time.perf_counter()
            call()
            samples.append((time.perf_counter() - t0) * 1e6)
        out[name] = statistics.median(samples)
    return out


@dataclass
class Requests:
    """The history Loopline's state is built from and the request rows every server gets."""

    history: list[dict[str, Any]]  # Event records (envelopes), in production order
    raw: list[dict[str, Any]]  # request raw events (what a Loopline client sends), one user each
    features: list[dict[str, Any]]  # the engine's request-time features for each
    rows: list[dict[str, Any]]  # the full model rows the peers get
    expected: list[float]  # the pipeline's predict_proba on those rows
    users: int


def make_requests(spec, fitted: Fitted, *, history: int, users: int, seed: int, count: int) -> Requests:
    """A history of `history` events of `users` users, replayed through the feature engine (a replica
    of what the feature worker will hold), and `count` request events after it, each of another user
    with history and with every feature present."""
    from examples.fraud.generate import GeneratorConfig, generate
    from examples.fraud.training import INGESTED_AT, DictKV
    from shared.events import EventValidator
    from shared.features import FeatureEngine, FeatureStore
    from shared.serialization import dumps

    validator = EventValidator(spec)
    engine = FeatureEngine(spec)
    store, kv = FeatureStore(engine), DictKV()
    stream = [event for event, _ in generate(GeneratorConfig(seed=seed, users=users, events=history + 20 * count))]
    envelopes, seen_users = [], set()
    for raw in stream[:history]:
        record = validator.envelope(validator.validate(dict(raw)), source="http", ingested_at=INGESTED_AT)
        fields = record["data"]
        store.process(kv, 0, record["entity"].encode(), record["event_id"], engine.event_time(fields), fields,
                      lambda features: dumps(features))
        envelopes.append(record)
        seen_users.add(record["entity"])
    keep = ("user_id", "amount", "merchant_category", "country", "channel", "ts")
    out_raw, out_features, out_rows, asked = [], [], [], set()
    for raw in stream[history:]:
        user = raw["user_id"]
        if user not in seen_users or user in asked:
            continue
        request = {k: raw[k] for k in keep}
        record = validator.envelope(validator.validate(dict(request)), source="http", ingested_at=INGESTED_AT)
        fields = record["data"]
        features = store.snapshot(kv, 0, user.encode(), engine.event_time(fields), fields)
        if any(v is None for v in features.values()):
            continue
        asked.add(user)
        out_raw.append(request)
        out_features.append(dict(features))
        out_rows.append(model_row(fitted.columns, features, request))
        if len(out_raw) == count:
            break
    if len(out_raw) < count:
        raise RuntimeError(f"only {len(out_raw)} users with a full history for {count} requests: raise --history")
    return Requests(envelopes, out_raw, out_features, out_rows, fitted.scores(out_rows), len(seen_users))


# ---------------------------------------------------------------- request formats

def _floats(row: dict[str, Any], columns: list[str]) -> list[Any]:
    return [v if isinstance(v, str) else float(v) for v in (row[c] for c in columns)]


def body_plain(req: Requests, columns: list[str], numeric: list[str], n: int) -> bytes:
    rows = [dict(zip(columns, _floats(r, columns))) for r in req.rows[:n]]
    return orjson.dumps(rows[0] if n == 1 else rows)


def body_mlflow(req: Requests, columns: list[str], numeric: list[str], n: int) -> bytes:
    return orjson.dumps({"dataframe_split": {"columns": columns,
                                             "data": [_floats(r, columns) for r in req.rows[:n]]}})


def body_mlserver(req: Requests, columns: list[str], numeric: list[str], n: int) -> bytes:
    inputs = []
    for c in columns:
        values = [r[c] for r in req.rows[:n]]
        if c in numeric:
            inputs.append({"name": c, "shape": [n], "datatype": "FP64", "data": [float(v) for v in values]})
        else:
            inputs.append({"name": c, "shape": [n], "datatype": "BYTES", "data": values,
                           "parameters": {"content_type": "str"}})
    return orjson.dumps({"inputs": inputs, "parameters": {"content_type": "pd"},
                         "outputs": [{"name": "predict_proba"}]})


def body_loopline(req: Requests, columns: list[str], numeric: list[str], n: int) -> bytes:
    return orjson.dumps(req.raw[0] if n == 1 else req.raw[:n])


def scores_plain(answer: Any, n: int) -> list[float]:
    return answer["scores"]


def scores_mlflow(answer: Any, n: int) -> list[float]:
    return [p[1] for p in answer["predictions"]]


def scores_mlserver(answer: Any, n: int) -> list[float]:
    data = answer["outputs"][0]["data"]
    return data[1::2] if len(data) == 2 * n else data


def scores_loopline(answer: Any, n: int) -> list[float]:
    return [answer["score"]] if n == 1 else [p["score"] for p in answer["predictions"]]


# ---------------------------------------------------------------- processes

def tree_cpu_s(root: int | None) -> float | None:
    """User+system CPU seconds of a process and all its live descendants (None if it is gone)."""
    if root is None or proc_cpu_s(root) is None:
        return None
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            ppid = int(Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    total, stack = 0.0, [root]
    while stack:
        pid = stack.pop()
        total += proc_cpu_s(pid) or 0.0
        stack.extend(children.get(pid, ()))
    return total


class PeerProcess:
    """A peer server: a command run in its own session (so that stop() reaches its children too),
    ready when GET `ready_path` answers 200; output to a log file."""

    def __init__(self, argv: list[str], env: dict[str, str], port: int, ready_path: str, log_path: Path,
                 cwd: Path = ROOT, ready_timeout: float = 240.0):
        self.argv, self.env, self.port, self.ready_path = argv, {**os.environ, **env}, port, ready_path
        self.log_path, self.cwd, self.ready_timeout = log_path, cwd, ready_timeout
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> PeerProcess:
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv, cwd=self.cwd, env=self.env, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_until(self._ready, self.ready_timeout, f"{self.argv[0]} ready (log: {self.log_path})",
                       interval=0.5)
        except BaseException:
            self.stop()
            raise
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"{' '.join(self.argv[:3])} exited with {self.proc.returncode}:\n{self.tail()}")
        try:
            return httpx.get(self.url + self.ready_path, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM to its process group (the leader and its workers), SIGKILL for what is left after the
        timeout; also when the leader exited by itself and left children behind."""
        if self.proc is None:
            return
        pgid = self.proc.pid  # its own session: the group id is its pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            self.proc.wait()
        deadline = time.monotonic() + 10  # members that outlive the leader (a worker shutting down)
        while _group_alive(pgid):
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
                break
            time.sleep(0.1)
        self._log.close()

    def tail(self, n: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


# ---------------------------------------------------------------- wrk

_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}
_DURATION = r"([\d.]+)(us|ms|s|m)"


def _ms(value: str, unit: str) -> float:
    return float(value) * _UNITS_MS[unit]


def parse_wrk(text: str) -> dict[str, Any]:
    """requests, seconds, rps, p50/p75/p90/p99 (ms), non_2xx, socket_errors from wrk --latency output."""
    out: dict[str, Any] = {"non_2xx": 0, "socket_errors": 0}
    for pct, value, unit in re.findall(rf"^\s*(50|75|90|99)%\s+{_DURATION}\s*$", text, re.MULTILINE):
        out[f"p{pct}_ms"] = _ms(value, unit)
    if m := re.search(rf"(\d+) requests in {_DURATION}", text):
        out["requests"], out["seconds"] = int(m[1]), _ms(m[2], m[3]) / 1e3
    if m := re.search(r"Requests/sec:\s+([\d.]+)", text):
        out["rps"] = float(m[1])
    if m := re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text):
        out["non_2xx"] = int(m[1])
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text):
        out["socket_errors"] = sum(int(x) for x in m.groups())
    missing = {"requests", "rps", "p50_ms", "p99_ms"} - out.keys()
    if missing:
        raise RuntimeError(f"could not read {sorted(missing)} from wrk's output:\n{text}")
    return out


def wrk_script(work: Path, name: str, body: bytes) -> Path:
    """A wrk Lua script that POSTs `body` (kept in a file beside it) as JSON."""
    body_path = work / f"{name}.json"
    body_path.write_bytes(body)
    script = work / f"{name}.lua"
    script.write_text(f"""-- bench/serving.py: POST a fixed JSON body
local f = assert(io.open("{body_path}", "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
""")
    return script


def run_wrk(wrk: str, url: str, script: Path, connections: int, seconds: float,
            pids: dict[str, int | None], trees: set[str]) -> dict[str, Any]:
    """One wrk run; its parsed figures plus the CPU seconds each process used meanwhile."""
    threads = 1 if connections == 1 else 2
    argv = [wrk, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency",
            "--timeout", "10s", "-s", str(script), url]
    meter = TreeMeter(pids, trees).start()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    cpu = meter.stop()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    wrk_s = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    cpu["wrk"] = wrk_s
    if cpu.get("other") is not None:
        cpu["other"] = max(0.0, cpu["other"] - wrk_s)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    result = parse_wrk(done.stdout)
    result.update(threads=threads, cpu_s=cpu, wall_s=meter.wall_s)
    return result


class TreeMeter(CpuMeter):
    """CpuMeter that counts the whole process tree of the names in `trees` (a server and its workers),
    and the wall time between start and stop."""

    def __init__(self, pids: dict[str, int | None], trees: set[str]):
        super().__init__(pids)
        self.trees = trees

    def _now(self) -> dict[str, float | None]:
        snap = super()._now()
        for name in self.trees:
            snap[name] = tree_cpu_s(self.pids[name])
        return snap

    def start(self) -> TreeMeter:
        self._t0 = time.monotonic()
        super().start()
        return self

    def stop(self) -> dict[str, float | None]:
        used = super().stop()
        self.wall_s = time.monotonic() - self._t0
        return used


# ---------------------------------------------------------------- the servers

@dataclass
class Target:
    """One server under test: how to start it, where to send which body, how to read its scores."""

    name: str
    start: Callable[[], Any]  # -> an object with .url and .stop(), and a pid
    path: Callable[[int], str]  # rows -> request path
    body: Callable[[Requests, list[str], list[str], int], bytes]
    scores: Callable[[Any, int], list[float]]
    extra_pids: Callable[[], dict[str, int | None]] = field(default=dict)
    # before each timed run: wait until work the previous run left behind is done (Loopline: its log)
    settle: Callable[[str], None] = field(default=lambda url: None)


def log_drained(url: str, timeout_s: float = 120.0) -> None:
    """Until Loopline serving's prediction log has nothing pending (its /metrics), so a timed run does
    not pay for the previous run's backlog (the peers have nothing of the kind to wait for)."""
    from shared.metrics import metric_value

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not metric_value(httpx.get(f"{url}/metrics", timeout=5).text, "loopline_serving_log_pending"):
            return
        time.sleep(0.2)
    raise TimeoutError(f"the prediction log still had records pending after {timeout_s:.0f} s")


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path, wrk: str, fitted: Fitted, req: Requests,
                 peer_bins: dict[str, Path]):
        self.args, self.work, self.wrk, self.fitted, self.req = args, work, wrk, fitted, req
        self.peer_bins = peer_bins
        self.loopline: Loopline | None = None
        self.rows: list[dict[str, Any]] = []
        self.untimed: dict[str, int] = {}  # server -> rows answered outside the timed runs (checks, warm-up)
        self.checks: dict[str, dict[str, Any]] = {}
        self.errors: dict[str, str] = {}

    def check_scores(self, target: Target, url: str) -> dict[str, Any]:
        """POST the one-row and the 100-row body once; compare the scores with predict_proba here."""
        out: dict[str, Any] = {}
        for n in (1, self.args.batch_rows):
            body = target.body(self.req, self.fitted.columns, self.fitted.numeric, n)
            r = httpx.post(url + target.path(n), content=body, headers={"content-type": "application/json"},
                           timeout=30)
            if r.status_code != 200:
                raise RuntimeError(f"{target.name}: {r.status_code} for a {n}-row request: {r.text[:500]}")
            answer = r.json()
            got = target.scores(answer, n)
            if len(got) != n:
                raise RuntimeError(f"{target.name}: {len(got)} scores for {n} rows: {r.text[:300]}")
            diff = max(abs(a - b) for a, b in zip(got, self.req.expected[:n]))
            out[f"max_abs_diff_{n}"] = diff
            if n == 1:
                out["answer_1"] = answer
        out["ok"] = all(v <= SCORE_TOLERANCE for k, v in out.items() if k.startswith("max_abs_diff"))
        return out

    def measure(self, target: Target) -> None:
        a = self.args
        print(f"\n== {LABELS[target.name]}", flush=True)
        t0 = time.perf_counter()
        server = target.start()
        try:
            url = server.url
            print(f"   started in {time.perf_counter() - t0:.1f} s ({url})", flush=True)
            check = self.check_scores(target, url)
            if self.loopline is not None and target.name == "loopline":
                check.update(self.loopline.check(check))
            self.checks[target.name] = check
            print(f"   scores vs predict_proba here: max |diff| {check['max_abs_diff_1']:.2e} (1 row), "
                  f"{check[f'max_abs_diff_{a.batch_rows}']:.2e} ({a.batch_rows} rows) -> "
                  f"{'OK' if check['ok'] else 'MISMATCH'}", flush=True)
            scripts = {n: wrk_script(self.work, f"{target.name}-{n}",
                                     target.body(self.req, self.fitted.columns, self.fitted.numeric, n))
                       for n in (1, a.batch_rows)}
            pids = {"server": server_pid(server), "broker": broker_pid(), **target.extra_pids()}
            pids = {k: v for k, v in pids.items() if v is not None}  # no broker without Kafka
            self.untimed[target.name] = 1 + a.batch_rows  # the score checks
            for n in (1, a.batch_rows):  # warm-up: connections, code paths, caches; not reported
                r = run_wrk(self.wrk, url + target.path(n), scripts[n], 16, a.warmup / 2, pids, {"server"})
                self.untimed[target.name] += r["requests"] * n
            for connections in a.connections:
                for n in (1, a.batch_rows):
                    target.settle(url)
                    r = run_wrk(self.wrk, url + target.path(n), scripts[n], connections, a.duration, pids,
                                {"server"})
                    if not server_alive(server):
                        raise RuntimeError(f"{target.name} died during the run")
                    r.update(server=target.name, connections=connections, rows=n)
                    self.rows.append(r)
                    cpu = r["cpu_s"].get("server")
                    print(f"   {connections:>2} conn, {n:>3} rows: {r['rps']:>8,.1f} req/s  "
                          f"p50 {r['p50_ms']:7.2f} ms  "
                          f"p99 {r['p99_ms']:7.2f} ms  server CPU {fmt_us(cpu, r['requests'])} µs/req"
                          + (f"  ERRORS non-2xx {r['non_2xx']} socket {r['socket_errors']}"
                             if r["non_2xx"] or r["socket_errors"] else ""), flush=True)
        finally:
            server.stop()
            if self.loopline is not None and target.name == "loopline":
                self.loopline.after(self)

    # the per-server start functions

    def start_plain(self) -> PeerProcess:
        port = free_port()
        return PeerProcess(
            [sys.executable, "-m", "uvicorn", "--factory", "bench.peers.plain_app:create_app",
             "--host", "127.0.0.1", "--port", str(port), "--no-access-log", "--log-level", "warning"],
            {"PLAIN_MODEL_PATH": str(self.work / "model.skops")}, port, "/health", self.work / "plain.log").start()

    def start_mlflow(self) -> PeerProcess:
        bin_dir = self.peer_bins["mlflow"]
        port = free_port()
        # `mlflow models serve` runs `uvicorn` from PATH: the peer venv's
        env = {"PATH": f"{bin_dir}:{os.environ.get('PATH', '')}", "UVICORN_ACCESS_LOG": "false",
               "MLFLOW_TRACKING_URI": (self.work / "mlruns").as_uri()}
        return PeerProcess([str(bin_dir / "mlflow"), "models", "serve", "-m", str(self.work / "mlflow-model"),
                            "-h", "127.0.0.1", "-p", str(port), "--env-manager", "local"],
                           env, port, "/ping", self.work / "mlflow.log").start()

    def start_mlserver(self) -> PeerProcess:
        bin_dir = self.peer_bins["mlserver"]
        port = free_port()
        repo = self.work / "mlserver"
        (repo / "fraud").mkdir(parents=True, exist_ok=True)
        shutil.copy(self.work / "model.joblib", repo / "fraud" / "model.joblib")
        (repo / "settings.json").write_text(json.dumps({
            "debug": False, "host": "127.0.0.1", "http_port": port, "grpc_port": free_port(),
            "metrics_port": free_port()}))
        (repo / "fraud" / "model-settings.json").write_text(json.dumps({
            "name": "fraud", "implementation": "mlserver_sklearn.SKLearnModel",
            "parameters": {"uri": "./model.joblib", "version": "v1"}}))
        return PeerProcess([str(bin_dir / "mlserver"), "start", str(repo)],
                           {"PATH": f"{bin_dir}:{os.environ.get('PATH', '')}"}, port, "/v2/models/fraud/ready",
                           self.work / "mlserver.log", cwd=repo).start()


def server_pid(server: Any) -> int | None:
    return server.proc.pid if server.proc is not None else None


def server_alive(server: Any) -> bool:
    return server.proc is not None and server.proc.poll() is None


def fmt_us(cpu_s: float | None, requests: int) -> str:
    return "-" if cpu_s is None or not requests else f"{cpu_s / requests * 1e6:,.0f}"


# ---------------------------------------------------------------- artifacts for the peers

def write_artifacts(work: Path, fitted: Fitted, X, peers: set[str], peer_bins: dict[str, Path]) -> bytes:
    """The skops artifact (Loopline, plain), a joblib dump (MLServer) and the MLflow model; returns
    the skops bytes."""
    import joblib

    from shared.registry import dump_model

    artifact = dump_model(fitted.pipeline, "sklearn")
    (work / "model.skops").write_bytes(artifact)
    joblib.dump(fitted.pipeline, work / "model.joblib")
    if "mlflow" in peers:
        X.head(200).to_parquet(work / "sample.parquet")
        argv = [str(peer_bins["mlflow"] / "python"), str(REQUIREMENTS_DIR / "mlflow_save.py"),
                str(work / "model.joblib"), str(work / "sample.parquet"), str(work / "mlflow-model")]
        done = subprocess.run(argv, capture_output=True, text=True, cwd=work, check=False,
                              env={**os.environ, "MLFLOW_TRACKING_URI": (work / "mlruns").as_uri()})
        if done.returncode != 0:
            raise RuntimeError(f"saving the MLflow model failed:\n{done.stderr[-3000:]}")
    return artifact


# ---------------------------------------------------------------- Loopline

class Loopline:
    """Kafka, the feature worker with the history, the registered champion, and the serving process."""

    def __init__(self, args: argparse.Namespace, work: Path, spec, fitted: Fitted, req: Requests, artifact: bytes):
        from shared.topics import Topics

        self.args, self.work, self.spec, self.fitted, self.req = args, work, spec, fitted, req
        self.artifact = artifact
        self.kafka = require_kafka("bench.serving")
        self.prefix = unique_prefix("serving")
        self.topics = Topics(self.prefix)
        self.base_env = {"KAFKA_BOOTSTRAP_SERVERS": self.kafka.bootstrap_servers,
                         "LOOPLINE_TOPIC_PREFIX": self.prefix, "LOOPLINE_SPEC_PATH": str(SPEC_PATH)}
        self.worker: ServiceProcess | None = None
        self.serving: ServiceProcess | None = None
        self.setup_s: dict[str, float] = {}
        self.integrity: dict[str, Any] = {}

    def prepare(self) -> None:
        """Topics, the feature worker, the history through `events` until every snapshot is out, and
        the pipeline registered as the champion."""
        from shared.kafka import ensure_topics

        t0 = time.perf_counter()
        event_loop_runner()(ensure_topics(self.kafka, self.topics))
        port = free_port()
        self.worker = ServiceProcess("services.features", {
            **self.base_env, "FEATURES_PORT": str(port), "FEATURES_DATA_DIR": str(self.work / "features"),
            "FEATURES_OFFLINE": "false"}, port=port, log_dir=self.work, ready_timeout=180)
        self.worker.start()
        self.setup_s["worker_ready"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        event_loop_runner()(self._history_and_model())
        self.setup_s["history_and_model"] = time.perf_counter() - t1
        print(f"   feature worker ready in {self.setup_s['worker_ready']:.1f} s; "
              f"{len(self.req.history):,} history "
              f"events of {self.req.users:,} users processed and the champion {MODEL_NAME} v{MODEL_VERSION} "
              f"published in {self.setup_s['history_and_model']:.1f} s", flush=True)

    async def _history_and_model(self) -> None:
        from shared.kafka import OutRecord, make_producer, send_batched
        from shared.serialization import dumps

        producer = make_producer(self.kafka)
        await producer.start()
        try:
            records = [OutRecord(self.topics["events"], r["entity"].encode(), dumps(r)) for r in self.req.history]
            await asyncio.gather(*await send_batched(producer, records))
            async with OffsetWatcher(self.kafka) as watch:
                await watch.wait_end(self.topics["features"], len(records), timeout_s=180, poll_s=0.2)
            version = self.model_version()
            await producer.send_and_wait(self.topics["models"], version.model_dump_json().encode(),
                                         key=version.key.encode())
        finally:
            await producer.stop()

    def model_version(self):
        from shared.events import DataRange, Lineage, ModelVersion
        from shared.modeling import model_classes
        from shared.registry import ArtifactStore, artifact_key, code_version, digest, package_versions

        store = ArtifactStore(str(self.work / "artifacts"))
        uri = store.put(artifact_key(self.spec.name, MODEL_NAME, MODEL_VERSION, "sklearn"), self.artifact)
        now = datetime.now(UTC)
        return ModelVersion(
            name=MODEL_NAME, version=MODEL_VERSION, stage="champion", library="sklearn",
            algorithm="logistic_regression", task="binary", artifact_uri=uri, sha256=digest(self.artifact),
            signature=None, metrics={}, evaluation="holdout", trained_at=now, updated_at=now,
            params={"max_iter": 1000}, inputs=list(self.fitted.columns), classes=model_classes(self.spec),
            lineage=Lineage(feature_hash=self.spec.feature_hash(), spec_name=self.spec.name,
                            data=DataRange(start=self.fitted.start, end=self.fitted.end,
                                           examples=self.fitted.examples),
                            code_version=code_version(), packages=package_versions()),
            reference={}, reason="bench.serving: the benchmark's pipeline, registered by hand")

    def start(self) -> ServiceProcess:
        port = free_port()
        self.serving = ServiceProcess(self.args.serving_module, {
            **self.base_env, "SERVING_PORT": str(port), "SERVING_HOST": "127.0.0.1",
            "SERVING_DATA_DIR": str(self.work / "serving"),
            "SERVING_ARTIFACT_URL": str(self.work / "artifacts")}, port=port, log_dir=self.work, ready_timeout=240)
        self.predictions_before = self._end("predictions")
        return self.serving.start()

    def pids(self) -> dict[str, int | None]:
        return {"worker": self.worker.proc.pid if self.worker and self.worker.proc else None}

    def _end(self, name: str) -> int:
        async def end() -> int:
            async with OffsetWatcher(self.kafka) as watch:
                return await watch.end(self.topics[name])
        return event_loop_runner()(end())

    def check(self, check: dict[str, Any]) -> dict[str, Any]:
        """Loopline's own checks on the one-row answer: the fields it must carry, its model, and its
        features (from the answer, else from its prediction log) against the engine's."""
        answer = check["answer_1"]
        out: dict[str, Any] = {"fields": sorted(answer)}
        missing = {"score", "decision", "model", "prediction_id"} - answer.keys()
        if missing:
            out["missing_fields"] = sorted(missing)
        model = answer.get("model") or {}
        out["model_ok"] = model.get("name") == MODEL_NAME and model.get("version") == MODEL_VERSION
        features, source = answer.get("features"), "response"
        if features is None and answer.get("prediction_id"):
            features, source = self._logged_features(answer["prediction_id"]), "prediction log"
        out["features_from"] = source if features is not None else "not available"
        if features is not None:
            expected = self.req.features[0]
            diffs = {k: (features.get(k), v) for k, v in expected.items() if not _same(features.get(k), v)}
            out["feature_diffs"] = diffs
            row = model_row(self.fitted.columns, features, self.req.raw[0])
            out["score_vs_own_features"] = abs(self.fitted.scores([row])[0] - answer["score"])
        out["ok"] = (check["ok"] and not missing and out["model_ok"] and not out.get("feature_diffs")
                     and out.get("score_vs_own_features", 0.0) <= SCORE_TOLERANCE)
        return out

    def _logged_features(self, prediction_id: str) -> dict[str, Any] | None:
        from aiokafka import TopicPartition

        from shared.kafka import make_consumer, partitions_of

        async def find() -> dict[str, Any] | None:
            consumer = make_consumer(self.kafka, group_id=None)
            await consumer.start()
            try:
                topic = self.topics["predictions"]
                parts = [TopicPartition(topic, p) for p in sorted(await partitions_of(consumer, topic))]
                consumer.assign(parts)
                await consumer.seek_to_beginning(*parts)
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    for records in (await consumer.getmany(timeout_ms=500)).values():
                        for rec in records:
                            value = orjson.loads(rec.value) if rec.value else {}
                            if prediction_id in (value.get("event_id"), value.get("prediction_id")):
                                return value.get("features")
                return None
            finally:
                await consumer.stop()
        return event_loop_runner()(find())

    def after(self, bench: Bench) -> None:
        """The prediction log's size (after serving stopped) against the predictions answered: wrk
        counts the answers it read; each run also leaves up to connections x rows answered unread."""
        timed = [r for r in bench.rows if r["server"] == "loopline"]
        answered = sum(r["requests"] * r["rows"] for r in timed) + bench.untimed.get("loopline", 0)
        in_flight = sum(r["connections"] * r["rows"] for r in timed) + 16 * (1 + self.args.batch_rows)
        logged, error = None, None
        try:
            logged = self._end("predictions") - self.predictions_before
        except Exception as exc:  # noqa: BLE001  (a report line, not a reason to lose the figures)
            error = repr(exc)
        self.integrity = {"logged": logged, "answered": answered, "unread_at_most": in_flight, "error": error,
                          "ok": logged is not None and answered <= logged <= answered + in_flight}

    def stop(self) -> None:
        for proc in (self.serving, self.worker):
            if proc is not None:
                proc.stop()


def _same(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=0, abs_tol=SCORE_TOLERANCE) or math.isclose(a, b, rel_tol=1e-12)
    return a == b


# ---------------------------------------------------------------- report

def goals(rows: list[dict[str, Any]], checks: dict[str, dict[str, Any]], batch_rows: int) -> list[dict[str, Any]]:
    """The issue's goals, judged on one-row requests (the 100-row ratios are shown as information)."""
    at = {(r["server"], r["connections"], r["rows"]): r for r in rows}
    out = []
    for n, info in ((1, False), (batch_rows, True)):
        ours16 = at.get(("loopline", 16, n))
        for peer in GOAL_PEERS:
            theirs = at.get((peer, 16, n))
            if ours16 and theirs:
                ratio = ours16["rps"] / theirs["rps"]
                out.append({"goal": f"16 conn, {n} row(s): requests/s >= 5x {peer}", "value": f"{ratio:.1f}x",
                            "pass": ratio >= 5, "info": info})
                ratio = ours16["p99_ms"] / theirs["p99_ms"]
                out.append({"goal": f"16 conn, {n} row(s): p99 <= 0.25x {peer}", "value": f"{ratio:.2f}x",
                            "pass": ratio <= 0.25, "info": info})
    ours1 = at.get(("loopline", 1, 1))
    if ours1:
        out.append({"goal": "1 conn, 1 row: p99 <= 3 ms", "value": f"{ours1['p99_ms']:.2f} ms",
                    "pass": ours1["p99_ms"] <= 3.0, "info": False})
    if "loopline" in checks:
        c = checks["loopline"]
        out.append({"goal": f"scores = predict_proba within {SCORE_TOLERANCE:g}",
                    "value": f"{max(c['max_abs_diff_1'], c[f'max_abs_diff_{batch_rows}']):.1e}",
                    "pass": bool(c["ok"]), "info": False})
    return out


def report(bench: Bench, args: argparse.Namespace, inproc: dict[str, float], cpu_model: str) -> dict[str, Any]:
    rows = bench.rows
    order = {s: i for i, s in enumerate(SERVERS)}
    rows.sort(key=lambda r: (r["rows"], r["connections"], order[r["server"]]))
    print(f"\nResults ({args.duration:g} s per run; µs/req = CPU time per request; "
          f"other load = cores used by the "
          f"rest of the machine meanwhile):")
    lines = []
    for r in rows:
        cpu = r["cpu_s"]
        wall = r["wall_s"]
        other = cpu.get("other")
        lines.append([LABELS[r["server"]], r["connections"], r["rows"], f"{r['rps']:,.1f}",
                      f"{r['rps'] * r['rows']:,.0f}",
                      f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}", fmt_us(cpu.get("server"), r["requests"]),
                      fmt_us(cpu.get("wrk"), r["requests"]),
                      fmt_us(cpu.get("broker"), r["requests"]) if r["server"] == "loopline" else "",
                      f"{other / wall:.2f}" if other is not None and wall else "-",
                      "" if not (r["non_2xx"] or r["socket_errors"]) else f"{r['non_2xx']}/{r['socket_errors']}"])
    print(table(["server", "conns", "rows/req", "req/s", "rows/s", "p50 ms", "p99 ms", "server µs/req",
                 "wrk µs/req", "broker µs/req", "other load", "errors"], lines))
    print(f"(in this process, the pipeline's predict_proba on a prepared one-row DataFrame: "
          f"{inproc['predict_proba_us']:,.0f} µs; building the DataFrame from the row dict too: "
          f"{inproc['frame_and_predict_proba_us']:,.0f} µs; median of 300 calls)")
    judged = goals(rows, bench.checks, args.batch_rows)
    if judged:
        print("\nGoals (Loopline against MLflow and MLServer in this run; 100-row rows are information):")
        print(table(["goal", "value", "verdict"],
                    [[g["goal"], g["value"], ("PASS" if g["pass"] else "MISS") + (" (info)" if g["info"] else "")]
                     for g in judged]))
    print("\nScore checks (max |score - predict_proba here| for the 1-row / 100-row body):")
    for name, c in bench.checks.items():
        extra = ""
        if name == "loopline":
            differing = f", differing: {c['feature_diffs']}" if c.get("feature_diffs") else ""
            extra = (f"; answer fields {c.get('fields')}; model {'OK' if c.get('model_ok') else 'WRONG'}; "
                     f"features from {c.get('features_from')}" + differing
                     + (f"; missing fields {c['missing_fields']}" if c.get("missing_fields") else ""))
        print(f"  {LABELS[name]:<20} {c['max_abs_diff_1']:.1e} / {c[f'max_abs_diff_{args.batch_rows}']:.1e} "
              f"-> {'OK' if c['ok'] else 'MISMATCH'}{extra}")
    for name, err in bench.errors.items():
        print(f"  {LABELS[name]:<20} FAILED: {err}")
    others = [r["cpu_s"]["other"] / r["wall_s"] for r in rows
              if r["cpu_s"].get("other") is not None and r["wall_s"]]
    load = (f"other load during the runs {min(others):.2f} - {max(others):.2f} cores"
            + ("  (above ~0.1 the figures are disturbed)" if max(others) > 0.1 else "")) if others else ""
    print(f"\nMachine: {machine()}, {cpu_model}; load average at the end {os.getloadavg()[0]:.2f}; {load}")
    checks = {k: {kk: vv for kk, vv in v.items() if not kk.startswith("answer")} for k, v in bench.checks.items()}
    return {"rows": rows, "goals": judged, "checks": checks,
            "errors": bench.errors, "in_process": inproc}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


# ---------------------------------------------------------------- main

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.serving", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=15.0, help="seconds per timed wrk run (default %(default)s)")
    ap.add_argument("--warmup", type=float, default=6.0,
                    help="seconds of 16-connection load per server before its timed runs (default %(default)s)")
    ap.add_argument("--connections", default="1,16", help="connection counts (default %(default)s)")
    ap.add_argument("--batch-rows", type=int, default=100, help="rows of the batch request (default %(default)s)")
    ap.add_argument("--servers", default=",".join(SERVERS), help="which servers, in order (default %(default)s)")
    ap.add_argument("--skip-loopline", action="store_true", help="measure the peers only (no broker needed)")
    ap.add_argument("--serving-module", default="services.serving",
                    help="module run as Loopline serving (`python -m MODULE`, same env and routes; "
                         "default %(default)s)")
    ap.add_argument("--train", type=int, default=5000, help="training examples (default %(default)s)")
    ap.add_argument("--history", type=int, default=20_000,
                    help="history events sent through Kafka (default %(default)s)")
    ap.add_argument("--users", type=int, default=1000, help="users in the history (default %(default)s)")
    ap.add_argument("--seed", type=int, default=7, help="seed of the training data; the history uses seed+1")
    ap.add_argument("--keep", action="store_true",
                    help="keep the work directory (logs, request bodies, models, state); "
                         "kept anyway after a failure")
    ap.add_argument("--json", action="store_true", help="also print the results as one JSON object (last line)")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a goal is missed")
    args = ap.parse_args(argv)
    args.connections = [int(c) for c in args.connections.split(",")]
    args.servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    unknown = set(args.servers) - set(SERVERS)
    if unknown:
        ap.error(f"unknown server(s) {sorted(unknown)}; choose from {SERVERS}")
    if args.skip_loopline and "loopline" in args.servers:
        args.servers.remove("loopline")
    if not args.servers or args.duration < 1 or args.batch_rows < 2 or min(args.connections) < 1:
        ap.error("need a server, --duration >= 1, --batch-rows >= 2 and connections >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sigterm_as_exit()
    if "loopline" in args.servers:
        if find_spec(args.serving_module) is None:
            sys.exit(f"bench.serving: {args.serving_module} does not exist (services/serving is issue 12's "
                     "work), so Loopline cannot be measured. Run the peers alone with --skip-loopline.")
        require_kafka("bench.serving")
    wrk = ensure_wrk()
    peer_bins = {name: ensure_peer_venv(name) for name in ("mlflow", "mlserver") if name in args.servers}
    from shared.spec import load_spec

    spec = load_spec(SPEC_PATH)
    work = Path(tempfile.mkdtemp(prefix="loopline-bench-serving."))
    started = time.perf_counter()
    print(f"serving bench: {machine()}, {cpu_model()}, load average {os.getloadavg()[0]:.2f}; wrk {wrk}; "
          f"work dir {work}", flush=True)
    fitted, X = fit(spec, args.train, args.seed)
    req = make_requests(spec, fitted, history=args.history, users=args.users, seed=args.seed + 1,
                        count=args.batch_rows)
    inproc = time_in_process(fitted, req.rows[0])
    print(f"pipeline fitted on {fitted.examples:,} examples ({fitted.positives:,} fraud) in {fitted.fit_s:.1f} s; "
          f"{len(req.history):,} history events of {req.users:,} users; "
          f"requests: {args.batch_rows} users with history",
          flush=True)
    artifact = write_artifacts(work, fitted, X, set(args.servers), peer_bins)
    bench = Bench(args, work, wrk, fitted, req, peer_bins)
    loopline: Loopline | None = None
    targets = {
        "plain": Target("plain", bench.start_plain, lambda n: "/predict", body_plain, scores_plain),
        "mlflow": Target("mlflow", bench.start_mlflow, lambda n: "/invocations", body_mlflow, scores_mlflow),
        "mlserver": Target("mlserver", bench.start_mlserver, lambda n: "/v2/models/fraud/infer", body_mlserver,
                           scores_mlserver),
    }
    for name in args.servers:
        try:
            if name == "loopline":
                print(f"\n== {LABELS[name]}: setting up (broker {os.environ['KAFKA_BOOTSTRAP_SERVERS']})",
                      flush=True)
                loopline = Loopline(args, work, spec, fitted, req, artifact)
                bench.loopline = loopline
                loopline.prepare()
                targets[name] = Target(name, loopline.start,
                                       lambda n: "/v1/predict" if n == 1 else "/v1/predict/batch",
                                       body_loopline, scores_loopline, loopline.pids, settle=log_drained)
            bench.measure(targets[name])
        except (RuntimeError, TimeoutError, httpx.HTTPError, KeyError, ValueError) as exc:
            bench.errors[name] = f"{type(exc).__name__}: {exc}"
            print(f"   FAILED: {bench.errors[name]}", file=sys.stderr, flush=True)
        finally:
            if name == "loopline" and loopline is not None:
                loopline.stop()  # the worker too: nothing of Loopline's runs beside the peers
    keep = args.keep or bool(bench.errors)
    print(f"\nmeasured in {time.perf_counter() - started:.0f} s"
          + (f"; logs and bodies in {work}" if keep else ""))
    result = report(bench, args, inproc, cpu_model())
    if loopline is not None and loopline.integrity:
        i = loopline.integrity
        print(f"Loopline prediction log: {i['logged']} records written while it ran; {i['answered']:,} "
              f"predictions answered and read by wrk and the checks, plus up to {i['unread_at_most']:,} "
              f"answered as wrk stopped -> "
              f"{'OK' if i['ok'] else 'NOT every prediction logged once'}"
              + (f"; could not read it: {i['error']}" if i["error"] else ""))
        result["prediction_log"] = i
    print("\n" + EXPLAIN.replace("WARMUP", f"{args.warmup:g}").replace("DURATION", f"{args.duration:g}"))
    if args.json:
        result["config"] = vars(args)
        result["machine"] = {"summary": machine(), "cpu": cpu_model()}
        print(json.dumps(result, default=str))
    if not keep:
        shutil.rmtree(work, ignore_errors=True)
    missed = [g for g in result["goals"] if not g["pass"] and not g["info"]]
    return 1 if bench.errors or (args.strict and missed) else 0


if __name__ == "__main__":
    sys.exit(main())
