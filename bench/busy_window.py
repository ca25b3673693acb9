"""One entity with a busy window: cost per event and record sizes at 1k, 10k, 100k and 1M events
in the entity's 24 h window (a global stream without entity is exactly this).

    .venv/bin/python -m bench.busy_window [--sizes 1000,10000,100000,1000000] [--measure 20000]
        [--peer-ref REV] [--peer-max 60000] [--json]

For each size N: one entity's events arrive in time order, N of them per 21.6 h (so the 24 h
windows hold N), 5 % of them up to 60 s out of order. After the window has filled, the next
`--measure` events are timed: CPU per event of `FeatureStore.process` (the feature worker's
per-event call: duplicate lookup, features, state update) writing to a RocksDB database with the
worker's options, plus the largest record written and the records written per event. No Kafka.

Peer: the engine as it was at git revision `--peer-ref` (default: the last one before the state
was split into records), which kept an entity's whole window in one record, loaded, updated and
written back per event; run for sizes up to `--peer-max` (its cost grows with N).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import random
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from rocksdict import Options, Rdict

from bench.common import ROOT, machine, table
from shared.features import FeatureEngine, FeatureStore
from shared.serialization import dumps
from shared.spec import parse_spec

SPEC = parse_spec("""
name: busy
event:
  time_field: ts
  fields:
    value: {type: float}
    kind: {type: category, values: [a, b, c, d, e, f, g, h]}
    ts: {type: timestamp}
label: {name: y, type: binary, max_delay: 1h}
metrics: {primary: roc_auc}
features:
  allowed_lateness: 5m
  definitions:
    - {name: n_10m, agg: count, window: 10m}
    - {name: n_24h, agg: count, window: 24h}
    - {name: value_sum_1h, agg: sum, field: value, window: 1h}
    - {name: value_mean_24h, agg: mean, field: value, window: 24h}
    - {name: value_std_24h, agg: std, field: value, window: 24h}
    - {name: value_min_24h, agg: min, field: value, window: 24h}
    - {name: value_max_24h, agg: max, field: value, window: 24h}
    - {name: value_ratio_24h, agg: ratio_to_mean, field: value, window: 24h}
    - {name: kind_distinct_24h, agg: distinct, field: kind, window: 24h}
    - {name: n_1h_tumbling, agg: count, window: 1h, kind: tumbling}
    - {name: last_value, agg: last, field: value}
    - {name: since_last, agg: time_since_last}
""")
SPAN_S = 0.9 * 86_400
START = 1_772_323_200.0  # 2026-03-01
DEFAULT_PEER_REF = "bde652b"


class RocksKV:
    """A RocksDB database with the feature worker's options, counting what is written."""

    def __init__(self, path: Path):
        opts = Options()
        opts.set_write_buffer_size(4 << 20)
        opts.set_max_write_buffer_number(2)
        self.db = Rdict(str(path), opts)
        self.writes = 0
        self.largest = 0

    def get(self, key: bytes) -> bytes | None:
        return self.db.get(key)

    def set(self, key: bytes, value: bytes) -> None:
        self.writes += 1
        self.largest = max(self.largest, len(value))
        self.db[key] = value

    def delete(self, key: bytes) -> None:
        self.writes += 1
        del self.db[key]

    def close(self) -> None:
        self.db.close()


def events(n_window: int, total: int, seed: int = 1):
    """(event_id, t, fields) in arrival order: n_window events per SPAN_S, 5 % up to 60 s late."""
    rng = random.Random(seed)
    gap = SPAN_S / n_window
    for i in range(total):
        t = START + i * gap
        if rng.random() < 0.05:
            t -= rng.uniform(0, min(60.0, 250.0))
        yield f"e{i}", t, {"value": round(rng.lognormvariate(3, 1), 2), "kind": "abcdefgh"[rng.randrange(8)], "ts": t}


def run_store(n_window: int, measure: int, workdir: Path) -> dict:
    engine = FeatureEngine(SPEC)
    store = FeatureStore(engine)
    kv = RocksKV(workdir / f"store-{n_window}")
    stream = events(n_window, n_window + measure)
    fill_started = time.process_time()
    for _ in range(n_window):
        eid, t, fields = next(stream)
        store.process(kv, 0, b"__global__", eid, t, fields, dumps)
    fill_s = time.process_time() - fill_started
    kv.writes = kv.largest = 0
    started = time.process_time()
    for eid, t, fields in stream:
        store.process(kv, 0, b"__global__", eid, t, fields, dumps)
    cpu = time.process_time() - started
    state = store.state(kv, 0, b"__global__")
    kv.close()
    return {"window_events": len(state), "us_per_event": 1e6 * cpu / measure, "largest_record_bytes": kv.largest,
            "records_per_event": kv.writes / measure, "fill_s": fill_s}


def load_peer(ref: str):
    """The engine module as of a git revision, or None when git or the revision is not there."""
    try:
        source = subprocess.run(["git", "show", f"{ref}:shared/features.py"], cwd=ROOT, check=True,
                                capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    path = Path(tempfile.mkdtemp()) / "peer_features.py"
    path.write_bytes(source)
    spec = importlib.util.spec_from_file_location("peer_features", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def run_peer(module, n_window: int, measure: int) -> dict:
    """The one-record engine: per event load the entity's bytes, apply, dump (what its worker did)."""
    engine = module.FeatureEngine(SPEC)
    data = None
    stream = events(n_window, n_window + measure)
    for _ in range(n_window):
        eid, t, fields = next(stream)
        state = engine.load(data)
        engine.apply(state, eid, t, fields)
        data = engine.dump(state)
    largest = 0
    started = time.process_time()
    for eid, t, fields in stream:
        state = engine.load(data)
        applied = engine.apply(state, eid, t, fields)
        dumps(applied.features)
        data = engine.dump(state)
        largest = max(largest, len(data))
    cpu = time.process_time() - started
    return {"window_events": len(engine.load(data)), "us_per_event": 1e6 * cpu / measure,
            "largest_record_bytes": largest, "records_per_event": 1.0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.busy_window", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,100000,1000000")
    parser.add_argument("--measure", type=int, default=20_000, help="events timed per size")
    parser.add_argument("--peer-ref", default=DEFAULT_PEER_REF)
    parser.add_argument("--peer-max", type=int, default=60_000, help="largest size run for the peer")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"busy_window: {machine()}", flush=True)
    peer = load_peer(args.peer_ref) if args.peer_ref else None
    workdir = Path(tempfile.mkdtemp(prefix="loopline-busy-"))
    rows, results = [], []
    try:
        for n in sizes:
            ours = run_store(n, args.measure, workdir)
            theirs = run_peer(peer, n, min(args.measure, 2000)) if peer is not None and n <= args.peer_max else None
            results.append({"size": n, "loopline": ours, "one_record_peer": theirs})
            rows.append([f"{n:,}", f"{ours['window_events']:,}", f"{ours['us_per_event']:.1f}",
                         f"{ours['largest_record_bytes']:,}", f"{ours['records_per_event']:.2f}",
                         f"{theirs['us_per_event']:.1f}" if theirs else "-",
                         f"{theirs['largest_record_bytes']:,}" if theirs else "-"])
            print(f"  size {n:,}: {ours['us_per_event']:.1f} us/event", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(table(["events in window (target)", "kept", "µs CPU/event", "largest record B", "records written/event",
                 f"one-record engine @{args.peer_ref} µs/event", "its record B"], rows))
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
