"""docker-compose.yml cannot be run here (no Docker), so it is checked: against the Compose
specification's JSON schema, every service's command and environment against what the services
accept, the mounted files exist, Prometheus scrapes every service where compose runs it, and every
dashboard query names a metric a service exports."""
from __future__ import annotations

import importlib
import json
import re

import jsonschema_rs
import pytest
import yaml

from tests.data import ROOT
from tests.support import SERVICES, exported_metrics

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
# The Compose specification's schema, as docker-compose 1.29.2 ships it (compose/config/compose_spec.json).
SCHEMA = json.loads((ROOT / "tests" / "contracts" / "compose-spec.json").read_text())


def test_the_compose_file_follows_the_compose_specification():
    validator = jsonschema_rs.validator_for(SCHEMA)
    assert [e.message for e in validator.iter_errors(COMPOSE)] == []
    broken = json.loads(json.dumps(COMPOSE))
    broken["services"]["serving"]["ports"] = "8004"  # the check itself can fail
    assert not validator.is_valid(broken)


def accepted_env(service: str) -> set[str]:
    """The environment variables a service reads: its settings' fields under their prefix, the
    LOOPLINE_* base fields (by alias) and the KAFKA_* fields."""
    from shared.settings import KafkaSettings

    config = importlib.import_module(f"services.{service}.config")
    settings = next(v for v in vars(config).values()
                    if isinstance(v, type) and v.__module__ == config.__name__ and v.__name__.endswith("Settings"))
    prefix = settings.model_config["env_prefix"]
    names = {f"KAFKA_{f.upper()}" for f in KafkaSettings.model_fields}
    for field_name, info in settings.model_fields.items():
        if field_name == "kafka":
            continue
        names.add(info.validation_alias if isinstance(info.validation_alias, str) else f"{prefix}{field_name.upper()}")
    return names


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_runs_its_module_with_settings_it_accepts(service):
    spec = COMPOSE["services"][service]
    assert spec["command"] == ["python", "-m", f"services.{service}"]
    assert importlib.util.find_spec(f"services.{service}.__main__") is not None
    unknown = set(spec["environment"]) - accepted_env(service)
    assert unknown == set(), f"{service} does not read {sorted(unknown)}"
    port = int(spec["environment"][f"{service.upper()}_PORT"])
    assert spec["ports"] == [f"{port}:{port}"] and str(port) in spec["healthcheck"]["test"][-1]
    assert spec["environment"][f"{service.upper()}_HOST"] == "0.0.0.0"


def test_unknown_environment_is_caught():
    assert "SERVING_MAX_BATCH" in accepted_env("serving") and "SERVING_MAX_BATCHES" not in accepted_env("serving")
    assert "LOOPLINE_SPEC_PATH" in accepted_env("monitor") and "KAFKA_BOOTSTRAP_SERVERS" in accepted_env("monitor")


def test_mounted_files_exist_and_prometheus_scrapes_every_service():
    for service in COMPOSE["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), source
    prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    targets = {t for job in prometheus["scrape_configs"] for group in job["static_configs"] for t in group["targets"]}
    expected = {f"{s}:{COMPOSE['services'][s]['environment'][f'{s.upper()}_PORT']}" for s in SERVICES}
    assert targets == expected
    assert prometheus["rule_files"] == ["/etc/prometheus/rules.yml"]


def test_every_dashboard_query_names_an_exported_metric():
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "loopline.json").read_text())
    exported = set(exported_metrics())
    used = {name for panel in dashboard["panels"] for target in panel["targets"]
            for name in re.findall(r"\bloopline_[a-z0-9_]+", target["expr"])}
    assert used and used - exported == set()
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("lag", "throughput", "latency", "freshness", "drift", "live model metric", "alerts"):
        assert topic in titles


@pytest.mark.parametrize("service,scope", [("ingest", "events:write"), ("trainer", "admin"), ("serving", "predict"),
                                           ("monitor", "admin")])
def test_api_keys_are_on_in_compose_and_must_be_given(service, scope):
    value = COMPOSE["services"][service]["environment"][f"{service.upper()}_API_KEYS"]
    # ${VAR:?message}: compose refuses to start without the keys rather than serve the routes open
    assert re.fullmatch(r"\$\{LOOPLINE_%s_API_KEYS:\?[^}]*%s[^}]*\}" % (service.upper(), scope), value), value
