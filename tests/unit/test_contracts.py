"""Contract tests: every record ingest and the feature worker's domain emit validates against its wire
model in shared/events.py (strict: unknown fields, wrong types and NaN fail), for every problem type.

The records go the way they go in production: ingest's checks build the `Event` and `Label` bytes,
the worker decodes them, `process_event` renders the snapshot, the label join builds the example.
"""
from __future__ import annotations

from datetime import datetime, timezone

import pytest
from pydantic import ValidationError

from services.features.domain import (
    JoinTable, LabelClock, LabelJoin, decode_event, decode_join_input, process_event,
)
from services.ingest.domain import check_events, check_labels
from shared.events import Event, EventValidator, FeatureSnapshot, Label, TrainingExample
from shared.features import FeatureEngine, FeatureStore
from shared.serialization import dumps
from shared.spec import parse_spec
from tests.data import DictKV, JoinKV, fraud_text, txn, wire

NOW = datetime(2026, 11, 27, tzinfo=timezone.utc)  # a day after the events txn() makes
DAY = 86_400.0

# (the spec's YAML, a label value ingest accepts for it, the value on the wire)
PROBLEMS = {
    "fraud": (fraud_text(), 1, True),
    "no entity": (fraud_text(entity=False), False, False),
    "multiclass": (fraud_text(label="multiclass", classes="[low, mid, high]"), "mid", "mid"),
    "regression": (fraud_text(label="regression"), 12, 12.0),
}


class Pipeline:
    """Ingest's checks, then the feature worker's domain, over in-memory stores."""

    def __init__(self, spec_text: str):
        self.spec = parse_spec(spec_text)
        self.validator = EventValidator(self.spec)
        self.store, self.kv = FeatureStore(FeatureEngine(self.spec)), DictKV()
        self.join, self.view = JoinTable(LabelJoin(self.spec, wall_grace_s=DAY)), JoinKV()
        self.now = NOW.timestamp()

    def events(self, raw: list[dict]) -> list[bytes]:
        return self._ingest(check_events, raw, Event)

    def labels(self, raw: list[dict]) -> list[bytes]:
        return self._ingest(check_labels, raw, Label)

    def _ingest(self, check, raw: list[dict], model) -> list[bytes]:
        checked = check(self.validator, raw, source="http", now=NOW)
        assert checked.rejected == []
        for out in checked.accepted:
            wire(out.value, model)
        return [out.value for out in checked.accepted]

    def snapshot(self, event: bytes) -> bytes:
        res = process_event(self.store, self.kv, 0, decode_event(event), now=self.now, max_future_s=300,
                            max_bytes=900_000)
        assert res.snapshot is not None, res
        return res.snapshot

    def to_join(self, kind: str, value: bytes):
        record = decode_join_input(kind, value, now=self.now, max_future_s=300)
        key = record["target_event_id" if kind == "label" else "event_id"]
        return self.join.apply(self.view, key.encode(), kind, record, [kind, 0, 0], self.now)


@pytest.mark.parametrize("problem", PROBLEMS)
def test_snapshots_from_process_event_are_feature_snapshots(problem):
    spec_text, _, _ = PROBLEMS[problem]
    p = Pipeline(spec_text)
    events = p.events([txn(i, user_id="u1") for i in range(6)])
    snapshots = [wire(p.snapshot(e), FeatureSnapshot) for e in events]
    assert [s["event_id"] for s in snapshots] == [f"ev-{i}" for i in range(6)]
    assert snapshots[-1]["features"]["txn_count_1h"] == 5  # real values, not an empty dict
    assert snapshots[-1]["entity"] == ("u1" if p.spec.entity else None)
    # a redelivered event re-emits the stored original
    assert wire(p.snapshot(events[2]), FeatureSnapshot) == snapshots[2]


@pytest.mark.parametrize("problem", PROBLEMS)
def test_training_examples_from_the_label_join_are_training_examples(problem):
    spec_text, sent, value = PROBLEMS[problem]
    p = Pipeline(spec_text)
    snapshots = [p.snapshot(e) for e in p.events([txn(i, user_id="u1") for i in range(2)])]
    observed = "2026-11-26T12:00:00Z"
    labels = p.labels([{"event_id": f"ev-{i}", "value": sent, "observed_at": observed} for i in range(2)])

    snapshot_first = p.to_join("snapshot", snapshots[0]), p.to_join("label", labels[0])
    label_first = p.to_join("label", labels[1]), p.to_join("snapshot", snapshots[1])
    for snap, (first, second) in zip(snapshots, (snapshot_first, label_first)):
        assert (first.status, first.example, second.status) == ("waiting", None, "joined")
        example = wire(dumps(second.example), TrainingExample)
        assert (example["label"], type(example["label"])) == (value, type(value))
        assert example["labelled_at"] == observed
        assert example["features"] == wire(snap, FeatureSnapshot)["features"]
    again = p.to_join("label", labels[0])  # a redelivered label re-emits the same example
    assert again.status == "duplicate"
    assert wire(dumps(again.example), TrainingExample) == snapshot_first[1].example


@pytest.mark.parametrize("problem", PROBLEMS)
def test_expired_join_entries_dead_letter_the_records_they_hold(problem):
    """The unlabelled snapshot and the label whose event never came go to the dead-letter topic as
    records of their own models."""
    spec_text, sent, _ = PROBLEMS[problem]
    p = Pipeline(spec_text)
    [event] = p.events([txn(1)])
    [label] = p.labels([{"event_id": "never-seen", "value": sent, "observed_at": "2026-11-26T12:00:00Z"}])
    p.to_join("snapshot", p.snapshot(event))
    p.to_join("label", label)
    gone = p.join.sweep(p.view, LabelClock().now(0), p.now + 30 * DAY)  # past both expiries (worker clock)
    assert sorted(g.kind for g in gone) == ["label", "snapshot"]
    for g in gone:
        wire(dumps(g.record), FeatureSnapshot if g.kind == "snapshot" else Label)


def test_wire_refuses_what_the_models_forbid_and_what_they_would_coerce():
    p = Pipeline(fraud_text())
    snap = wire(p.snapshot(p.events([txn(1)])[0]), FeatureSnapshot)
    unhashed = {k: v for k, v in snap.items() if k != "feature_hash"}
    for bad in ({**snap, "ingested_at": snap["occurred_at"]}, unhashed,
                {**snap, "features": {"x": "1"}}, {**snap, "features": {"x": True}},
                {**snap, "occurred_at": 1764151200}, {**snap, "schema_version": "1"}):
        with pytest.raises(ValidationError):
            wire(dumps(bad), FeatureSnapshot)
    with pytest.raises(ValidationError):
        wire(dumps(snap).replace(b'"features":{', b'"features":{"x":NaN,'), FeatureSnapshot)
