"""bench/serving.py's pure parts: reading wrk's output and judging the goals (no servers, no wrk)."""
from __future__ import annotations

import pytest

from bench.serving import goals, parse_wrk

WRK_OUT = """\
Running 15s test @ http://127.0.0.1:25752/invocations
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   125.46ms   40.10ms   1.20s    80.00%
    Req/Sec    55.40     10.20    80.00     70.00%
  Latency Distribution
     50%  125.46ms
     75%  140.00ms
     90%  700.00us
     99%    1.20s
  1662 requests in 15.01s, 300.00KB read
  Socket errors: connect 0, read 1, write 0, timeout 2
  Non-2xx or 3xx responses: 4
Requests/sec:    110.73
Transfer/sec:     20.00KB
"""


def test_parse_wrk_reads_rate_percentiles_in_any_unit_and_errors():
    r = parse_wrk(WRK_OUT)
    assert r["requests"] == 1662 and r["seconds"] == pytest.approx(15.01) and r["rps"] == pytest.approx(110.73)
    assert r["p50_ms"] == pytest.approx(125.46) and r["p90_ms"] == pytest.approx(0.7)
    assert r["p99_ms"] == pytest.approx(1200.0)
    assert r["non_2xx"] == 4 and r["socket_errors"] == 3


def test_parse_wrk_refuses_output_without_the_figures():
    with pytest.raises(RuntimeError, match="could not read"):
        parse_wrk("unable to connect to 127.0.0.1:1 Connection refused")


def _row(server, connections, rows, rps, p99):
    return {"server": server, "connections": connections, "rows": rows, "rps": rps, "p99_ms": p99}


def test_goals_judge_loopline_against_both_peers_at_16_connections_and_its_own_p99_at_1():
    rows = [_row("loopline", 16, 1, 1000, 20), _row("mlflow", 16, 1, 100, 300), _row("mlserver", 16, 1, 250, 60),
            _row("loopline", 1, 1, 500, 2.5)]
    checks = {"loopline": {"max_abs_diff_1": 0.0, "max_abs_diff_100": 1e-12, "ok": True}}
    verdicts = {g["goal"]: g["pass"] for g in goals(rows, checks, 100)}
    assert verdicts == {
        "16 conn, 1 row(s): requests/s >= 5x mlflow": True,
        "16 conn, 1 row(s): p99 <= 0.25x mlflow": True,
        "16 conn, 1 row(s): requests/s >= 5x mlserver": False,  # 4x
        "16 conn, 1 row(s): p99 <= 0.25x mlserver": False,  # 0.33x
        "1 conn, 1 row: p99 <= 3 ms": True,
        "scores = predict_proba within 1e-09": True,
    }
