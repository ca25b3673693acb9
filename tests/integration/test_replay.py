"""The replay command against the real broker: a file and a topic range fed into `events` again."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from shared.events import Event, Label
from shared.serialization import dumps
from tests.data import txn, wire
from tests.support import ROOT, read_topic

pytestmark = pytest.mark.integration


def replay(service_env, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.ingest.replay", *args], cwd=ROOT,
                          env={**os.environ, **service_env}, capture_output=True, text=True,
                          timeout=120)


async def test_replay_a_file_then_a_topic_range(kafka, topics, service_env, tmp_path):
    path = tmp_path / "history.ndjson"
    history = [txn(i, prefix="r-", user_id=f"u{i % 3}") for i in range(20)]
    history.append(txn(20, prefix="r-", amount=-1))
    path.write_bytes(b"".join(dumps(e) + b"\n" for e in history))

    dry = replay(service_env, "--file", str(path), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would replay 20 events; 1 invalid" in dry.stdout
    assert "amount: Input should be greater than or equal to 0" in dry.stderr

    done = replay(service_env, "--file", str(path))
    assert done.returncode == 0 and "replayed into" in done.stdout and "20 events; 1 invalid" in done.stdout
    records = await read_topic(kafka, topics["events"], expect=20)
    events = [wire(r.value, Event) for r in records]
    assert sorted(e["event_id"] for e in events) == sorted(f"r-{i}" for i in range(20))
    assert {e["source"] for e in events} == {"replay"} and {r.key for r in records} == {b"u0", b"u1", b"u2"}

    # a topic range: offsets 0..2 of every partition of `events` (3 entities -> up to 3 partitions)
    again = replay(service_env, "--topic", "events", "--from-offset", "0", "--to-offset", "2")
    assert again.returncode == 0, again.stderr
    replayed = int(again.stdout.split("events;")[0].split()[-1])
    assert 3 <= replayed <= 9
    after = await read_topic(kafka, topics["events"], expect=20 + replayed)
    ids = [wire(r.value, Event)["event_id"] for r in after]
    assert len(ids) == 20 + replayed and set(ids) == {f"r-{i}" for i in range(20)}  # same ids: dedup downstream


async def test_replay_labels_keeps_observed_at_and_refuses_labels_without_it(kafka, topics, service_env, tmp_path):
    path = tmp_path / "outcomes.ndjson"
    rows = [{"event_id": f"r-{i}", "value": i % 2 == 0, "observed_at": f"2026-02-03T10:00:{i:02d}Z"} for i in range(5)]
    rows.append({"event_id": "r-9", "value": True})  # no observed_at: would count as observed now
    path.write_bytes(b"\n".join(dumps(r) for r in rows) + b"\n")
    done = replay(service_env, "--labels", "--file", str(path))
    assert done.returncode == 0, done.stderr
    assert "5 labels; 1 invalid" in done.stdout and "needs observed_at" in done.stderr
    records = await read_topic(kafka, topics["labels"], expect=5)
    labels = {lb["target_event_id"]: lb for r in records for lb in [wire(r.value, Label)]}
    assert set(labels) == {f"r-{i}" for i in range(5)} and {r.key for r in records} == {f"r-{i}".encode() for i in range(5)}
    assert labels["r-3"]["occurred_at"] == "2026-02-03T10:00:03Z" and labels["r-3"]["value"] is False
