"""deploy/prometheus/rules.yml: promtool checks it and runs its unit tests (rules_test.yml), and every
metric a rule reads is one a service exports, with the labels the rule matches on.

promtool comes from Debian's prometheus package, installed by the test command (deploy/ensure-promtool.sh,
run by `make test`, `make test-unit` and deploy/run-tests.sh). Without it this fails in CI and is skipped
elsewhere, saying how to get it."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support import exported_metrics

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
RULES_TEST = ROOT / "deploy" / "prometheus" / "rules_test.yml"
METRIC = re.compile(r"\b(loopline_[a-z0-9_]+)\b(\{[^}]*\})?")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")


def promtool() -> str:
    found = shutil.which("promtool")
    if found:
        return found
    how = ("promtool is not installed: run deploy/ensure-promtool.sh (Debian's prometheus package; "
           "`make test` and `make test-unit` run it)")
    if os.environ.get("CI"):
        pytest.fail(how)
    pytest.skip(how)


def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([promtool(), *argv], cwd=ROOT, capture_output=True, text=True, check=False, timeout=120)


def test_promtool_checks_the_rules():
    done = run("check", "rules", str(RULES.relative_to(ROOT)))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_promtool_unit_tests_of_the_rules_pass():
    done = run("test", "rules", str(RULES_TEST.relative_to(ROOT)))
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_has_a_unit_test():
    rules = yaml.safe_load(RULES.read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load(RULES_TEST.read_text())["tests"]
    firing = {t["alertname"] for group in tests for t in group.get("alert_rule_test", []) if t.get("exp_alerts")}
    assert alerts - firing == set(), "alerts without a test that expects them to fire"


def test_the_rules_read_only_exported_metrics_and_labels():
    names = exported_metrics()
    assert "loopline_monitor_lag_records" in names and "loopline_serving_log_undelivered_total" in names
    rules = yaml.safe_load(RULES.read_text())
    used = 0
    problems = []
    for group in rules["groups"]:
        for rule in group["rules"]:
            for name, matchers in METRIC.findall(rule["expr"]):
                used += 1
                if name not in names:
                    problems.append(f"{rule.get('alert') or rule.get('record')}: {name} is not exported")
                    continue
                unknown = {label for label in MATCHER.findall(matchers)} - names[name]
                if unknown:
                    problems.append(f"{rule.get('alert') or rule.get('record')}: {name} has no label {sorted(unknown)}")
    assert used > 10
    assert problems == []


def test_the_metric_check_catches_a_name_no_service_exports():
    names = exported_metrics()
    assert "loopline_monitor_data_drift" in names
    assert "loopline_monitor_data_drfit" not in names
    assert names["loopline_monitor_bias"] == {"field", "segment", "statistic"}
