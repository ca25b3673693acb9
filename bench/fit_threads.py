"""Why the trainer fits with one native thread by default (TRAINER_FIT_THREADS): a scikit-learn
HistGradientBoosting fit with 1 and with 2 OpenMP threads, on idle cores and while every core is
busy with other processes (as when Kafka and the other services run beside the trainer).

    .venv/bin/python -m bench.fit_threads [--rows N] [--iters K] [--repeat R] [--burners B]

Each fit runs in a fresh process (OpenMP's thread count is fixed at its first use); the figure is the
median wall time of R fits. Busy: B `while True` processes (default: one per core) for the duration.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

FIT = """
import time, numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
rng = np.random.default_rng(0)
X = rng.normal(size=({rows}, 30)); y = (X[:, 0] + rng.normal(size={rows}) > 2).astype(int)
t = time.perf_counter()
HistGradientBoostingClassifier(max_iter={iters}, learning_rate=0.1).fit(X, y)
print(time.perf_counter() - t)
"""


def fit_s(threads: int, rows: int, iters: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run([sys.executable, "-c", FIT.format(rows=rows, iters=iters)], env=env, check=True,
                         capture_output=True, text=True).stdout
    return float(out.strip())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=3200)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--burners", type=int, default=0, help="busy processes (default: one per core)")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    burners_n = args.burners or cores
    results: dict[tuple[str, int], float] = {}
    for load in ("idle", "busy"):
        burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(burners_n)] \
            if load == "busy" else []
        try:
            time.sleep(0.5 if burners else 0)
            for threads in (1, 2):
                results[(load, threads)] = statistics.median(
                    fit_s(threads, args.rows, args.iters) for _ in range(args.repeat))
        finally:
            for b in burners:
                b.kill()
                b.wait()
    print(f"HistGradientBoosting fit, {args.rows} rows x 30, {args.iters} iterations, median of {args.repeat} "
          f"({cores} cores; busy: {burners_n} spinning processes)")
    print(f"{'cores':6s} {'1 thread':>10s} {'2 threads':>10s}")
    for load in ("idle", "busy"):
        print(f"{load:6s} {results[(load, 1)]:9.2f}s {results[(load, 2)]:9.2f}s")


if __name__ == "__main__":
    main()
