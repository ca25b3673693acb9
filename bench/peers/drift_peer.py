"""bench/monitor.py's drift peers, run in their own virtualenvs (bench/.peers/evidently, bench/.peers/nannyml):

    python drift_peer.py evidently|nannyml DATA.npz ROUNDS

DATA.npz holds `reference` and `current` (rows x features, float64) and `columns`. The DataFrames are
built before the clock starts; each round times the tool's whole drift computation on them (Evidently:
Report([DataDriftPreset()]).run(current, reference); NannyML: UnivariateDriftCalculator(...).fit(reference)
then .calculate(current)), both with their defaults. Prints one JSON object: the tool's version, the
method it used, the seconds per round and the columns it flagged as drifted (with their drift values)."""
from __future__ import annotations

import json
import sys
import time
import warnings


def evidently(reference, current, columns, rounds):
    import evidently as ev
    from evidently import Report
    from evidently.presets import DataDriftPreset

    times, snap = [], None
    for _ in range(rounds):
        t0 = time.perf_counter()
        snap = Report([DataDriftPreset()]).run(current, reference)
        times.append(time.perf_counter() - t0)
    values, drifted, methods = {}, [], set()
    for metric in snap.dict()["metrics"]:
        config = metric.get("config") or {}
        if not config.get("type", "").endswith(":ValueDrift"):
            continue
        column, method, threshold = config["column"], config["method"], float(config["threshold"])
        value = float(metric["value"])
        methods.add(f"{method}, threshold {threshold:g}")
        values[column] = value
        # p-value tests drift below the threshold, distances at or above it (evidently's own rule)
        if (value < threshold) if "p_value" in method.lower() else (value >= threshold):
            drifted.append(column)
    return {"version": ev.__version__, "method": "; ".join(sorted(methods)), "times": times,
            "drifted": drifted, "values": values}


def nannyml(reference, current, columns, rounds):
    import nannyml as nml

    times, result, calc = [], None, None
    for _ in range(rounds):
        t0 = time.perf_counter()
        calc = nml.UnivariateDriftCalculator(column_names=columns)
        calc.fit(reference)
        result = calc.calculate(current)
        times.append(time.perf_counter() - t0)
    df = result.filter(period="analysis").to_df()
    drifted, values, methods = [], {}, set()
    for column in columns:
        keys = [k for k in df.columns if str(k[0]) == column and k[-1] == "alert"]
        for key in keys:
            methods.add(str(key[1]))
            values[column] = float(df[(key[0], key[1], "value")].max())
        if any(bool(df[k].any()) for k in keys):
            drifted.append(column)
    chunks = len(df)
    return {"version": nml.__version__,
            "method": f"{', '.join(sorted(methods))}, default thresholds; flagged when any of the {chunks} analysis "
                      "chunks alerts", "times": times, "drifted": drifted, "values": values}


def main() -> None:
    import numpy as np
    import pandas as pd

    warnings.filterwarnings("ignore")
    tool, path, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
    data = np.load(path)
    columns = [str(c) for c in data["columns"]]
    reference = pd.DataFrame(data["reference"], columns=columns)
    current = pd.DataFrame(data["current"], columns=columns)
    run = {"evidently": evidently, "nannyml": nannyml}[tool]
    print(json.dumps(run(reference, current, columns, rounds)))


if __name__ == "__main__":
    main()
