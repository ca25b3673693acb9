"""Unit tests of examples/sea/generate.py: determinism, validity against the spec, the two concepts,
label times; and the in-process reference of examples/sea/loop.py learning only labels already sent."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from examples.sea.generate import THRESHOLDS, SeaConfig, generate
from examples.sea.loop import SPEC_PATH, LoopConfig, river_in_process, steps_of
from shared.events import EventValidator
from shared.spec import load_spec

SPEC = load_spec(SPEC_PATH)
START = datetime(2026, 12, 1, tzinfo=UTC)


def test_the_same_config_gives_the_same_stream_and_every_event_is_valid():
    cfg = SeaConfig(events=500, drift_at=250, start=START)
    stream = list(generate(cfg))
    assert stream == list(generate(cfg)) and stream != list(generate(SeaConfig(seed=8, events=500, start=START)))
    validator = EventValidator(SPEC)
    for event, _ in stream:
        validator.validate(event)


def test_labels_follow_the_first_concept_before_the_drift_and_the_second_after():
    cfg = SeaConfig(events=4000, drift_at=2000, drift_width=50, start=START)
    stream = list(generate(cfg))

    def agree(part, variant):
        return sum((e["x1"] + e["x2"] > THRESHOLDS[variant]) == label["value"] for e, label in part) / len(part)

    assert agree(stream[:1800], cfg.variant_before) == 1.0 and agree(stream[2200:], cfg.variant_after) == 1.0
    assert agree(stream[2200:], cfg.variant_before) < 0.85  # the concepts disagree on ~21 % of the points


def test_labels_are_observed_their_delay_after_their_event():
    cfg = SeaConfig(events=100, rate_per_s=10, label_delay_s=5, label_jitter_s=2, start=START)
    for i, (event, label) in enumerate(generate(cfg)):
        t, seen = datetime.fromisoformat(event["ts"]), datetime.fromisoformat(label["observed_at"])
        assert t == START + timedelta(seconds=i / 10) and label["event_id"] == event["event_id"]
        assert timedelta(seconds=5) <= seen - t <= timedelta(seconds=7)


def test_a_drift_too_early_for_its_width_is_refused():
    with pytest.raises(ValueError, match="drift_width"):
        SeaConfig(drift_at=10_000, drift_width=10)  # river's sigmoid would overflow


def test_the_in_process_reference_predicts_each_event_from_the_labels_sent_before_it():
    cfg = LoopConfig(SeaConfig(events=1200, drift_at=600, start=START), warmup=200)
    steps, truth = steps_of(SPEC, cfg)
    decisions = river_in_process(SPEC, steps, cfg.warmup)
    assert decisions[:200] == [None] * 200 and None not in decisions[200:] and len(decisions) == len(truth)
    # cut the steps just before event 700: the decisions up to it do not change
    cut = next(i for i, (kind, body) in enumerate(steps) if kind == "event" and body["event_id"].endswith("-700"))
    assert river_in_process(SPEC, steps[:cut], cfg.warmup) == decisions[:700]
