"""Unit tests of examples/fraud/generate.py: determinism, validity against the spec, labels, drift."""
from __future__ import annotations

import importlib.util
import sys
from datetime import datetime, timedelta

import pytest

from tests.data import ROOT, VALIDATOR


def _load_generator():
    # examples/ is not a package; load the script by path (registered first so dataclasses can resolve it).
    spec = importlib.util.spec_from_file_location("fraud_generate", ROOT / "examples" / "fraud" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["fraud_generate"] = module
    spec.loader.exec_module(module)
    return module


gen = _load_generator()


def _t(ts: str) -> datetime:
    return datetime.fromisoformat(ts)


@pytest.fixture(scope="module")
def drifted():
    """20k events, new fraud pattern from event 10000 (seed 42)."""
    return list(gen.generate(gen.GeneratorConfig(events=20_000, drift_at=10_000)))


@pytest.fixture(scope="module")
def plain():
    return list(gen.generate(gen.GeneratorConfig(seed=7, events=20_000)))


def test_same_seed_same_stream_different_seed_different_stream():
    cfg = gen.GeneratorConfig(events=3000, drift_at=1500)
    a = list(gen.generate(cfg))
    assert a == list(gen.generate(gen.GeneratorConfig(events=3000, drift_at=1500)))
    assert list(gen.interleave(a)) == list(gen.interleave(gen.generate(cfg)))
    b = list(gen.generate(gen.GeneratorConfig(seed=43, events=3000, drift_at=1500)))
    assert [e for e, _ in a] != [e for e, _ in b]
    assert len(b) == 3000


def test_events_validate_against_the_spec(drifted):
    for i, (event, _) in enumerate(drifted):
        VALIDATOR.validate(event)  # raises ValidationFailed on any mismatch
        assert event["event_id"] == f"fraud-42-{i}"
        assert 0 < event["amount"] <= 50000 and event["amount"] == round(event["amount"], 2)
        assert event["ts"].endswith("Z") and len(event["ts"]) == len("2026-01-01T00:00:00.000Z")
        assert event["channel"] in ("pos", "web", "app")


def test_events_in_event_time_order_with_realistic_users(drifted):
    times = [_t(e["ts"]) for e, _ in drifted]
    assert times == sorted(times)
    assert times[0] >= _t("2026-01-01T00:00:00Z")
    users = {e["user_id"] for e, _ in drifted}
    assert 900 <= len(users) <= 1000 and all(u.startswith("u") and len(u) == 6 for u in users)


def test_labels_refer_to_their_event_and_arrive_within_max_delay(drifted):
    for event, label in drifted:
        if label is None:
            continue
        assert label["event_id"] == event["event_id"]
        assert isinstance(label["value"], bool)
        delay = _t(label["observed_at"]) - _t(event["ts"])
        assert timedelta(0) < delay <= timedelta(days=7)


def test_fraud_and_missing_label_rates_roughly_as_configured(plain):
    labels = [label for _, label in plain if label is not None]
    fraud = sum(label["value"] for label in labels) / len(labels)
    assert 0.01 <= fraud <= 0.03  # configured 0.02
    missing = 1 - len(labels) / len(plain)
    assert 0.015 <= missing <= 0.025  # configured 0.02
    cfg = gen.GeneratorConfig(seed=7, events=10_000, fraud_rate=0.1, label_missing_rate=0.2)
    stream = list(gen.generate(cfg))
    labels = [label for _, label in stream if label is not None]
    assert 0.05 <= sum(label["value"] for label in labels) / len(labels) <= 0.15
    assert 0.18 <= 1 - len(labels) / len(stream) <= 0.22


def test_interleave_is_in_real_time_order_and_keeps_everything(drifted):
    out = list(gen.interleave(drifted))
    assert sum(kind == "event" for kind, _ in out) == len(drifted)
    assert sum(kind == "label" for kind, _ in out) == sum(label is not None for _, label in drifted)
    times = [_t(body["ts"] if kind == "event" else body["observed_at"]) for kind, body in out]
    assert all(a <= b for a, b in zip(times, times[1:]))
    seen = set()
    for kind, body in out:
        if kind == "event":
            seen.add(body["event_id"])
        else:
            assert body["event_id"] in seen  # a label never precedes its event


def test_drift_brings_a_new_fraud_pattern(drifted):
    def shares(part):
        fraud = [e for e, label in part if label is not None and label["value"]]
        new = sum(e["channel"] == "app" and e["merchant_category"] in ("travel", "fashion") for e in fraud)
        burst = sum(e["amount"] <= 15 and e["channel"] == "web" for e in fraud)
        return new / len(fraud), burst / len(fraud)

    new_before, burst_before = shares(drifted[:10_000])
    new_after, burst_after = shares(drifted[10_000:])
    # Measured for seed 42: app travel/fashion fraud 2% -> 53%, small web (card-testing) fraud 45% -> 24%.
    assert new_before < 0.05 and new_after > 0.4
    assert burst_before > 0.35 and burst_after < burst_before - 0.1


def test_without_drift_there_is_no_new_pattern(plain):
    fraud = [e for e, label in plain[10_000:] if label is not None and label["value"]]
    assert sum(e["channel"] == "app" and e["merchant_category"] in ("travel", "fashion") for e in fraud) < 0.05 * len(fraud)


def test_config_rejects_label_delays_beyond_the_spec():
    with pytest.raises(ValueError):
        gen.GeneratorConfig(label_delay_max_s=8 * 86400)
    with pytest.raises(ValueError):
        gen.GeneratorConfig(drift_kind="something_else")
