"""The `loopline` CLI against the real broker and a real ingest process: replay of the generator's file
through ingest's HTTP API, a topic range produced to `events.raw` (validated by ingest's raw bridge), the
status of a running ingest, and the exploration report reading the registry from the `models` topic."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from shared.events import Event, Label
from tests.data import FRAUD, fitted_sklearn, fraud_training_examples, model_version, wire
from tests.support import ROOT, ServiceProcess, free_port, fraud_offline_store, produce, read_topic

pytestmark = pytest.mark.integration


def loopline(env: dict[str, str], *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """`python -m cli ...` as a user runs it (a real process, settings from the environment)."""
    return subprocess.run([sys.executable, "-m", "cli", *args], cwd=ROOT, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def ingest(service_env, tmp_path):
    port = free_port()
    proc = ServiceProcess("services.ingest", {**service_env, "INGEST_PORT": str(port)}, port=port, log_dir=tmp_path)
    proc.start()
    yield proc
    proc.stop()


async def test_replay_a_file_through_ingest_then_a_topic_range_to_events_raw(kafka, topics, service_env, ingest,
                                                                             tmp_path):
    from examples.fraud.generate import main as generate

    path = tmp_path / "stream.ndjson"
    assert generate(["--events", "300", "--seed", "11", "--out", str(path)]) == 0
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    sent_events = [x["body"] for x in lines if x["kind"] == "event"]
    sent_labels = [x["body"] for x in lines if x["kind"] == "label"]
    env = {**service_env, "LOOPLINE_INGEST_URL": ingest.url}

    done = loopline(env, "replay", str(path), "--batch", "64")
    assert done.returncode == 0, done.stderr
    assert f"{len(sent_events)} events and {len(sent_labels)} labels accepted, 0 rejected" in done.stdout
    events = [wire(r.value, Event) for r in await read_topic(kafka, topics["events"], expect=len(sent_events))]
    assert sorted(e["event_id"] for e in events) == sorted(e["event_id"] for e in sent_events)
    assert {e["event_id"]: e["data"]["amount"] for e in events} == {e["event_id"]: e["amount"] for e in sent_events}
    labels = [wire(r.value, Label) for r in await read_topic(kafka, topics["labels"], expect=len(sent_labels))]
    assert sorted((lab["target_event_id"], lab["value"]) for lab in labels) == sorted(
        (lab["event_id"], lab["value"]) for lab in sent_labels)

    # one partition of `events`, from offset 5 on, straight to events.raw: each record as a client sends it
    part0 = [wire(r.value, Event) for r in await read_topic(kafka, topics["events"], expect=len(sent_events))
             if r.partition == 0 and r.offset >= 5]
    again = loopline(env, "replay", "--topic", "events", "--partition", "0", "--from-offset", "5", "--via", "kafka")
    assert again.returncode == 0, again.stderr
    assert f"{len(part0)} events and 0 labels accepted" in again.stdout
    raw = [json.loads(r.value) for r in await read_topic(kafka, topics["events.raw"], expect=len(part0))]
    assert sorted(r["event_id"] for r in raw) == sorted(e["event_id"] for e in part0)
    by_id = {r["event_id"]: r for r in raw}
    assert all(by_id[e["event_id"]] == {**e["data"], "event_id": e["event_id"]} for e in part0)
    # ingest's raw bridge validates them into `events` again: same ids, so consumers dedup them
    after = await read_topic(kafka, topics["events"], expect=len(sent_events) + len(part0))
    assert len(after) == len(sent_events) + len(part0)
    assert {wire(r.value, Event)["event_id"] for r in after} == {e["event_id"] for e in sent_events}


async def test_status_of_a_running_ingest_and_the_rest_down(service_env, ingest):
    down = {f"LOOPLINE_{name.upper()}_URL": f"http://127.0.0.1:{free_port()}"
            for name in ("features", "trainer", "serving", "monitor")}
    r = loopline({**service_env, "LOOPLINE_INGEST_URL": ingest.url, "LOOPLINE_TIMEOUT_S": "3", **down},
                 "status", "--json")
    assert r.returncode == 1, r.stderr
    state = json.loads(r.stdout)
    by = {s["name"]: s for s in state["services"]}
    assert (by["ingest"]["up"], by["ingest"]["ready"], by["ingest"]["lag"]) == (True, True, 0)
    assert all(by[name]["up"] is False for name in ("features", "trainer", "serving", "monitor"))
    assert state["champion"] is None and state["alerts"] is None and state["ok"] is False


async def test_explore_reads_the_registry_from_the_models_topic(kafka, topics, service_env, tmp_path):
    frame = fraud_offline_store(tmp_path / "offline", 800, drift_at=None)
    model = fitted_sklearn(FRAUD, fraud_training_examples(200))
    t = frame["occurred_at"]
    records = []
    for version, stage in ((1, "archived"), (2, "champion")):
        v = model_version(FRAUD, str(tmp_path / "artifacts"), model, name="gbm", version=version, stage=stage)
        # v2 trained on the first 60 % of the store's time range: the report's training window
        data = v.lineage.data.model_copy(update={"start": t.iloc[0], "end": t.iloc[int(len(t) * 0.6)]})
        v = v.model_copy(update={"metrics": {"roc_auc": 0.8 + version / 100},
                                 "lineage": v.lineage.model_copy(update={"data": data})})
        records.append((v.key.encode(), v.model_dump_json().encode()))
    await produce(kafka, topics["models"], records)
    out = tmp_path / "report.html"
    r = loopline(service_env, "explore", "--offline", str(tmp_path / "offline"), "--out", str(out))
    assert r.returncode == 0, r.stderr
    page = out.read_text()
    assert "<td>gbm</td><td>1</td><td>archived</td>" in page and "<td>gbm</td><td>2</td><td>champion</td>" in page
    assert "roc_auc 0.82" in page and "From the models topic (2 versions" in page
    train = int(((t >= t.iloc[0]) & (t <= t.iloc[int(len(t) * 0.6)])).sum())
    assert f"the champion gbm v2&#x27;s training window" in page
    assert f"{train:,} rows in the training window, {len(t) - train:,} recent" in page
