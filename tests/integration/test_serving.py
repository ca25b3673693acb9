"""services/serving against the real broker, run as a real process next to a real feature worker:
request-time features equal the feature service's snapshots, hot swaps under load, refused
artifacts, shadow and canary traffic, restarts, and bad requests."""
from __future__ import annotations

import asyncio
import random
import shutil
import time
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from shared.events import GLOBAL_KEY, Event, EventValidator, FeatureSnapshot, Prediction
from shared.modeling import Vectorizer
from shared.serialization import loads
from shared.spec import parse_spec
from tests.data import (
    FRAUD, FRAUD_TEXT, envelope, fitted_sklearn, fraud_text, fraud_training_examples, keyed, model_version, txn,
    wire,
)
from tests.integration.test_features import topic_size as _topic_size
from tests.support import ServiceProcess, free_port, metric_value, produce, read_topic, wait_until

pytestmark = pytest.mark.integration
START = datetime(2026, 6, 1, tzinfo=timezone.utc)
ROUND_SIZE = 100  # events scored per round in the features-equality test (20 rounds)


@pytest.fixture
def serving(service_env, tmp_path):
    """Factory of serving processes; all stopped at teardown."""
    started: list[ServiceProcess] = []

    def make(spec_yaml: str | None = None, name: str = "s1", **extra: str) -> ServiceProcess:
        env = {**service_env, "SERVING_DATA_DIR": str(tmp_path / name),
               "SERVING_ARTIFACT_URL": str(tmp_path / "artifacts"), **extra}
        if spec_yaml is not None:
            (tmp_path / f"{name}.yaml").write_text(spec_yaml)
            env["LOOPLINE_SPEC_PATH"] = str(tmp_path / f"{name}.yaml")
        port = free_port()
        proc = ServiceProcess("services.serving", {**env, "SERVING_PORT": str(port)}, port=port, log_dir=tmp_path,
                              ready_timeout=180)
        started.append(proc)
        return proc

    yield make
    for proc in started:
        proc.stop()


@pytest.fixture(scope="module")
def model():
    return fitted_sklearn(FRAUD, fraud_training_examples(1500, seed=21))


async def publish(kafka, topics, version) -> None:
    await produce(kafka, topics["models"], [(version.key.encode(), version.model_dump_json().encode())])


def raw_event(user: str, t: datetime, i: int, **extra) -> dict:
    return txn(user_id=user, amount=round(5 + (i * 37) % 400 + 0.25, 2), ts=t.isoformat(),
               event_id=f"ev-{user}-{i}", **extra)


async def send_events(kafka, topics, raws: list[dict]) -> None:
    await produce(kafka, topics["events"], [keyed(envelope(r)) for r in raws])


def served_equal_snapshots(responses: dict[str, dict], snapshots: dict[str, dict], vec: Vectorizer) -> int:
    """Every served feature equals the worker's snapshot feature for the same event (None = missing)."""
    names = [d.name for d in FRAUD.features.definitions]
    for event_id, served in responses.items():
        snap = snapshots[event_id]
        for name in names:
            want, got = snap["features"][name], served["features"][name]
            assert (want is None and got is None) or (want is not None and got == float(want)), \
                f"{event_id} {name}: serving {got!r}, feature service {want!r}"
    return len(responses)


async def test_request_time_features_equal_the_feature_services_snapshots(kafka, topics, worker, serving, tmp_path,
                                                                          model):
    """Rounds of events for 200 users with history: serving scores each event before it is sent (its
    entity's state holds everything before it), then the event goes through the feature worker,
    whose snapshot must hold the same feature values: 2,000 events in 20 rounds of 100."""
    w = worker().start()
    await publish(kafka, topics, model_version(FRAUD, str(tmp_path / "artifacts"), model, name="lr", version=1,
                                               stage="champion"))
    rng = random.Random(3)
    users = [f"u{i}" for i in range(200)]
    history = [raw_event(u, START + timedelta(minutes=rng.uniform(0, 600)), -k) for u in users for k in range(1, 6)]
    history.sort(key=lambda r: r["ts"])
    await send_events(kafka, topics, history)
    s = serving().start()
    responses: dict[str, dict] = {}
    clock = START + timedelta(hours=11)
    async with httpx.AsyncClient(base_url=s.url, timeout=30) as client:
        for round_ in range(20):
            clock += timedelta(minutes=rng.uniform(1, 40))
            batch = [raw_event(u, clock + timedelta(seconds=j), round_)
                     for j, u in enumerate(rng.sample(users, ROUND_SIZE))]
            r = await client.post("/v1/predict/batch", json=batch)
            assert r.status_code == 200, r.text
            for raw, out in zip(batch, r.json()["predictions"]):
                assert out["event_id"] == raw["event_id"] and out["model"] == {"name": "lr", "version": 1}
                responses[raw["event_id"]] = out
            await send_events(kafka, topics, batch)
            expected = len(history) + ROUND_SIZE * (round_ + 1)
            await _until(lambda: _features_count(kafka, topics), expected, "the worker's snapshots")
            await serving_holds(client, batch)
    records = await read_topic(kafka, topics["features"], expect=len(history) + 20 * ROUND_SIZE)
    snapshots = {}
    for rec in records:
        snap = wire(rec.value, FeatureSnapshot)
        snapshots[snap["event_id"]] = snap
    assert served_equal_snapshots(responses, snapshots, Vectorizer(FRAUD)) == 20 * ROUND_SIZE == 2000
    logged = await read_topic(kafka, topics["predictions"], until=_covers(set(responses)))
    preds = [p for r in logged for p in [wire(r.value, Prediction)] if not p["event_id"].startswith("probe-")]
    assert len(preds) == len(responses) and {p["event_id"] for p in preds} == set(responses)
    assert {p["variant"] for p in preds} == {"champion"}
    one = next(p for p in preds if p["event_id"] == next(iter(responses)))
    assert one["features"] == responses[one["event_id"]]["features"] and one["model_version"] == 1
    s.stop()
    w.stop()


async def serving_holds(client: httpx.AsyncClient, newest: list[dict], timeout: float = 60) -> None:
    """Wait until serving's replica holds, for each event's entity, every event up to that one: probe
    predictions (event ids probe-..., logged like any other) until each reports the event's time as
    its entity's newest state event time. `newest` must hold each entity's newest event."""
    probes = [{**e, "event_id": f"probe-{e['event_id']}"} for e in newest]
    deadline = time.monotonic() + timeout
    while True:
        r = await client.post("/v1/predict/batch", json=probes)
        assert r.status_code == 200, r.text
        states = [p["staleness"]["state_event_time"] for p in r.json()["predictions"]]
        if all(got is not None and _same_time(got, e["ts"]) for got, e in zip(states, newest)):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"serving's state is behind: {list(zip(states, (e['ts'] for e in newest)))[:5]}")
        await asyncio.sleep(0.05)


def _same_time(a: str, b: str) -> bool:
    return abs(datetime.fromisoformat(a).timestamp() - datetime.fromisoformat(b).timestamp()) < 1e-5


def _covers(event_ids: set[str]):
    """Stop condition for read_topic: a record for each of these event ids was read."""
    def check(records) -> bool:
        return event_ids <= {loads(r.value)["event_id"] for r in records}
    return check


async def _features_count(kafka, topics) -> int:
    return await _topic_size(kafka, topics["features"])


async def _until(measure, at_least: int, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while (value := await measure()) < at_least:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: {value} < {at_least}")
        await asyncio.sleep(0.2)


GLOBAL_TEXT = fraud_text(entity=False)
GLOBAL = parse_spec(GLOBAL_TEXT)


async def test_request_time_features_on_a_global_stream_equal_the_feature_services_snapshots(
        kafka, topics, worker, serving, tmp_path, model):
    """A spec without an entity: one global stream, where every event's features aggregate every
    event before it. 150 rounds of one event each: serving scores the event (its state must hold
    exactly the stream before it: the newest event time it reports is the previous event's), the
    event goes through the feature worker, and the next round waits for the worker's snapshot and
    until serving's replica (fed by the worker's changelog) reports that event as the state's newest.
    Every feature value must be equal."""
    validator = EventValidator(GLOBAL)
    w = worker(spec_yaml=GLOBAL_TEXT).start()
    await publish(kafka, topics, model_version(GLOBAL, str(tmp_path / "artifacts"), model, name="lr", version=1,
                                               stage="champion"))
    rng = random.Random(5)
    clock = START
    history = []
    for i in range(200):  # several users, but one state: the stream's
        clock += timedelta(seconds=rng.uniform(1, 300))
        history.append(raw_event(f"g{i % 7}", clock, -i - 1))
    await produce(kafka, topics["events"], [keyed(envelope(r, validator)) for r in history])
    await _until(lambda: _features_count(kafka, topics), len(history), "the worker's snapshots")
    s = serving(GLOBAL_TEXT).start()
    responses: dict[str, dict] = {}
    previous = history[-1]
    async with httpx.AsyncClient(base_url=s.url, timeout=30) as client:
        await serving_holds(client, [previous])
        for i in range(150):
            clock += timedelta(seconds=rng.choice([0.5, 2, 30, 200, 900]))  # within and across the windows
            raw = raw_event(f"g{rng.randrange(7)}", clock, i)
            r = await client.post("/v1/predict", json=raw)
            assert r.status_code == 200, r.text
            out = r.json()
            assert out["event_id"] == raw["event_id"]
            assert _same_time(out["staleness"]["state_event_time"], previous["ts"]), (i, out["staleness"])
            responses[raw["event_id"]] = out
            await produce(kafka, topics["events"], [keyed(envelope(raw, validator))])
            await _until(lambda: _features_count(kafka, topics), len(history) + i + 1, "the worker's snapshot")
            await serving_holds(client, [raw])  # the one global state holds this event
            previous = raw
    records = await read_topic(kafka, topics["features"], expect=len(history) + 150)
    snapshots = {}
    for rec in records:
        snap = wire(rec.value, FeatureSnapshot)
        assert snap["entity"] is None and rec.key == GLOBAL_KEY.encode()
        snapshots[snap["event_id"]] = snap
    assert served_equal_snapshots(responses, snapshots, Vectorizer(GLOBAL)) == 150
    counts = [snapshots[e]["features"]["txn_count_1h"] for e in responses]
    assert max(counts) > 5 and min(counts) < max(counts)  # the windows held many users' events, and moved
    w.stop()


async def test_forward_sends_the_event_to_events_like_ingest(kafka, topics, worker, serving, service_env, tmp_path,
                                                             model):
    """`?forward=true`: each scored event also goes to `events`, as ingest would write it (same key,
    same record but for source and ingested_at); an event ingest refuses is refused with the same
    field and code, and nothing of its request is forwarded; a re-sent event_id is forwarded again,
    as ingest does (at-least-once), and the feature worker counts it once."""
    w = worker().start()
    await publish(kafka, topics, model_version(FRAUD, str(tmp_path / "artifacts"), model, name="lr", version=1,
                                               stage="champion"))
    s = serving().start()
    port = free_port()
    ingest = ServiceProcess("services.ingest", {**service_env, "INGEST_PORT": str(port),
                                                "INGEST_RAW_BRIDGE": "false"}, port=port, log_dir=tmp_path).start()
    try:
        one = raw_event("f1", START, 1)
        r = httpx.post(f"{s.url}/v1/predict", params={"forward": "true"}, json=one)
        assert r.status_code == 200 and r.json()["event_id"] == "ev-f1-1", r.text
        batch = [raw_event("f2", START + timedelta(seconds=k), k) for k in range(3)]
        r = httpx.post(f"{s.url}/v1/predict/batch", params={"forward": "true"}, json=batch)
        assert r.status_code == 200 and [p["event_id"] for p in r.json()["predictions"]] == \
            [e["event_id"] for e in batch], r.text
        no_id = {k: v for k, v in raw_event("f3", START, 0).items() if k != "event_id"}
        r = httpx.post(f"{s.url}/v1/predict", params={"forward": "true"}, json=no_id)
        assert r.status_code == 200
        new_id = r.json()["event_id"]
        unforwarded = raw_event("f4", START, 0)  # scored only
        assert httpx.post(f"{s.url}/v1/predict", json=unforwarded).status_code == 200
        # the same events through ingest
        r = httpx.post(f"{ingest.url}/v1/events", json=[one, *batch])
        assert r.status_code == 202, r.text

        future = (datetime.now(timezone.utc) + timedelta(days=1)).isoformat()
        bad = [({**raw_event("x1", START, 1), "amount": "12"}, "amount", "wrong_type"),
               ({**raw_event("x2", START, 1), "extra": 1}, "extra", "unknown_field"),
               ({k: v for k, v in raw_event("x3", START, 1).items() if k != "user_id"}, "user_id", "missing"),
               ({**raw_event("x4", START, 1), "amount": -1}, "amount", None),
               ({**raw_event("x5", START, 1), "ts": future}, "ts", "future")]
        for body, field, code in bad:
            served = httpx.post(f"{s.url}/v1/predict", params={"forward": "true"}, json=body)
            ingested = httpx.post(f"{ingest.url}/v1/events", json=body)
            assert served.status_code == 422 and ingested.status_code == 422, (served.text, ingested.text)
            got = {(x["field"], x["code"]) for x in served.json()["rejected"]}
            assert got == {(x["field"], x["code"]) for x in ingested.json()["rejected"]}, (got, ingested.text)
            assert field in {f for f, _ in got} and (code is None or (field, code) in got), got
        # one bad event sinks its batch: the good ones are not forwarded either
        r = httpx.post(f"{s.url}/v1/predict/batch", params={"forward": "true"},
                       json=[raw_event("x6", START, 1), {**raw_event("x6", START, 2), "country": "XX"}])
        assert r.status_code == 422 and r.json()["rejected"][0]["index"] == 1

        # the same event_id twice: forwarded twice, as ingest would store a re-sent event; counted once
        dup = raw_event("f5", START + timedelta(minutes=1), 9)
        for _ in range(2):
            assert httpx.post(f"{s.url}/v1/predict", params={"forward": "true"}, json=dup).status_code == 200

        records = await read_topic(kafka, topics["events"])  # everything was acknowledged before the answers
        events = [(rec.key, wire(rec.value, Event)) for rec in records]
        by_source: dict[str, list] = defaultdict(list)
        for key, ev in events:
            by_source[ev["source"]].append((key, ev))
        forwarded = by_source.pop("serving")
        assert set(by_source) == {"http"} and len(by_source["http"]) == 4
        assert sorted(ev["event_id"] for _, ev in forwarded) == sorted(
            [one["event_id"], *(e["event_id"] for e in batch), new_id, dup["event_id"], dup["event_id"]])
        assert not {ev["event_id"] for _, ev in events} & {"ev-x1-1", "ev-x2-1", "ev-x3-1", "ev-x4-1", "ev-x5-1",
                                                           "ev-x6-1", "ev-x6-2", unforwarded["event_id"]}
        via_ingest = {ev["event_id"]: (key, ev) for key, ev in by_source["http"]}
        for key, ev in forwarded:
            assert ev["entity"] == ev["data"]["user_id"] and key == ev["entity"].encode()
            if ev["event_id"] in via_ingest:
                ikey, iev = via_ingest[ev["event_id"]]
                strip = lambda e: {k: v for k, v in e.items() if k not in ("source", "ingested_at")}  # noqa: E731
                assert key == ikey and strip(ev) == strip(iev)
        assert metric_value(httpx.get(f"{s.url}/metrics").text, "loopline_serving_forwarded_events_total") == 7

        # the feature worker took the forwarded events; the duplicate counted once
        total = len(events)
        await _until(lambda: _features_count(kafka, topics), total, "the worker's snapshots")
        snaps = [wire(rec.value, FeatureSnapshot) for rec in await read_topic(kafka, topics["features"],
                                                                               expect=total)]
        dups = [sn for sn in snaps if sn["event_id"] == dup["event_id"]]
        assert len(dups) == 2 and dups[0] == dups[1]
        assert metric_value(httpx.get(f"{w.url}/metrics").text, "loopline_features_events_total",
                            outcome="duplicate") == 5  # the 4 sent through both paths, and the re-sent one
        async with httpx.AsyncClient(base_url=s.url, timeout=30) as client:
            await serving_holds(client, [dup])
        after = httpx.post(f"{s.url}/v1/predict", json=raw_event("f5", START + timedelta(minutes=2), 10)).json()
        assert after["features"]["txn_count_10m"] == 1.0 and after["features"]["last_amount"] == dup["amount"]
    finally:
        ingest.stop()


async def test_twenty_swaps_under_steady_requests_fail_no_request(kafka, topics, worker, serving, tmp_path, model):
    worker().start()
    store = str(tmp_path / "artifacts")
    await publish(kafka, topics, model_version(FRAUD, store, model, name="lr", version=1, stage="champion"))
    s = serving().start()
    statuses: Counter = Counter()
    versions_seen: list[int] = []
    stop = asyncio.Event()

    async def client_loop(n: int) -> None:
        async with httpx.AsyncClient(base_url=s.url, timeout=30) as client:
            i = 0
            while not stop.is_set():
                i += 1
                r = await client.post("/v1/predict", json=raw_event(f"c{n}-{i % 20}", START + timedelta(seconds=i), i))
                statuses[r.status_code] += 1
                if r.status_code == 200:
                    versions_seen.append(r.json()["model"]["version"])

    clients = [asyncio.create_task(client_loop(n)) for n in range(4)]
    for version in range(2, 22):  # 20 swaps, each a new champion record (a promotion)
        await publish(kafka, topics, model_version(FRAUD, store, model, name="lr", version=version, stage="champion"))
        await asyncio.sleep(0.4)
    wait_until(lambda: httpx.get(f"{s.url}/v1/models").json()["champion"]["version"] == 21, 60, "the last swap")
    await asyncio.sleep(0.5)
    stop.set()
    await asyncio.gather(*clients)
    assert set(statuses) == {200} and statuses[200] > 100
    assert set(versions_seen) <= set(range(1, 22)) and versions_seen[-1] == 21
    assert versions_seen == sorted(versions_seen) or len(set(versions_seen)) > 10  # the swaps were seen live
    metrics = httpx.get(f"{s.url}/metrics").text
    assert metric_value(metrics, "loopline_serving_model_swaps_total", role="champion") == 21


async def test_a_tampered_artifact_is_refused_while_the_old_version_serves(kafka, topics, worker, serving, tmp_path,
                                                                           model):
    worker().start()
    store = str(tmp_path / "artifacts")
    await publish(kafka, topics, model_version(FRAUD, store, model, name="lr", version=1, stage="champion"))
    s = serving().start()
    await publish(kafka, topics, model_version(FRAUD, store, model, name="lr", version=2, stage="champion",
                                               tamper=True))
    wait_until(lambda: httpx.get(f"{s.url}/v1/models").json()["refused"], 60, "the refusal")
    refused = httpx.get(f"{s.url}/v1/models").json()
    assert refused["champion"]["version"] == 1 and refused["refused"][0]["version"] == 2
    assert "digest" in refused["refused"][0]["reason"].lower() or "sha256" in refused["refused"][0]["reason"].lower()
    r = httpx.post(f"{s.url}/v1/predict", json=raw_event("t1", START, 1))
    assert r.status_code == 200 and r.json()["model"]["version"] == 1
    metrics = httpx.get(f"{s.url}/metrics").text
    assert metric_value(metrics, "loopline_serving_model_refusals_total", reason="verification") == 1


async def test_shadow_scores_are_logged_and_the_canary_share_is_sticky(kafka, topics, worker, serving, tmp_path,
                                                                       model):
    spec_text = FRAUD_TEXT + "\nserving: {threshold: 0.5, canary_share: 0.3}\n"
    spec = parse_spec(spec_text)
    worker().start()
    store = str(tmp_path / "artifacts")
    other = fitted_sklearn(FRAUD, fraud_training_examples(800, seed=22), C=0.01)
    for v in (model_version(spec, store, model, name="lr", version=1, stage="champion"),
              model_version(spec, store, other, name="lr2", version=1, stage="challenger"),
              model_version(spec, store, other, name="lr3", version=1, stage="shadow")):
        await publish(kafka, topics, v)
    s = serving(spec_text).start()
    wait_until(lambda: httpx.get(f"{s.url}/v1/models").json()["challenger"] is not None
               and httpx.get(f"{s.url}/v1/models").json()["shadows"], 60, "challenger and shadow loaded")
    variants: dict[str, set] = defaultdict(set)
    event_ids = []
    async with httpx.AsyncClient(base_url=s.url, timeout=30) as client:
        for i in range(1200):
            user = f"k{i % 300}"
            r = await client.post("/v1/predict", json=raw_event(user, START + timedelta(seconds=i), i))
            assert r.status_code == 200
            variants[user].add((r.json()["variant"], r.json()["model"]["name"]))
            event_ids.append(r.json()["event_id"])
    assert all(len(v) == 1 for v in variants.values())  # sticky: an entity always gets the same version
    share = sum(1 for v in variants.values() if ("challenger", "lr2") in v) / len(variants)
    assert 0.22 <= share <= 0.38, share
    logged = [wire(r.value, Prediction) for r in await read_topic(kafka, topics["predictions"], expect=2400)]
    shadows = [p for p in logged if p["variant"] == "shadow"]
    assert len(shadows) == 1200 and {p["model_name"] for p in shadows} == {"lr3"}
    assert {p["event_id"] for p in shadows} == set(event_ids)


async def test_a_restart_is_ready_only_once_the_replica_caught_up(kafka, topics, worker, serving, tmp_path, model):
    worker().start()
    await publish(kafka, topics, model_version(FRAUD, str(tmp_path / "artifacts"), model, name="lr", version=1,
                                               stage="champion"))
    history = [raw_event(f"r{i % 400}", START + timedelta(seconds=i), i) for i in range(6000)]
    await send_events(kafka, topics, history)
    await _until(lambda: _features_count(kafka, topics), 6000, "the worker's snapshots")
    s = serving().start()
    first = httpx.post(f"{s.url}/v1/predict", json=raw_event("r7", START + timedelta(hours=3), 99)).json()
    s.stop()
    changelog = topics.changelog(topics.group("features", f"defs-{FRAUD.feature_hash()}"), "entity-state")
    end = await _topic_size(kafka, changelog)
    assert end > 400  # the 400 entities' state records at least
    shutil.rmtree(tmp_path / "s1")  # lose the replica: it is rebuilt from the changelog
    s.start(wait_ready=False)
    s.wait_up()
    while (r := httpx.get(f"{s.url}/readyz", timeout=2)).status_code != 200:
        assert r.status_code == 503
        p = httpx.post(f"{s.url}/v1/predict", json=raw_event("r7", START + timedelta(hours=3), 99))
        if p.status_code == 200:  # it caught up between the two calls
            assert httpx.get(f"{s.url}/readyz", timeout=2).status_code == 200
        else:
            assert p.status_code == 503 and p.headers["retry-after"], p.text
    assert sum(r.json()["replica_positions"].values()) >= end  # ready only once the whole changelog is applied
    again = httpx.post(f"{s.url}/v1/predict", json=raw_event("r7", START + timedelta(hours=3), 99)).json()
    assert again["features"] == first["features"] and again["score"] == first["score"]


async def test_bad_requests_get_clear_4xx_and_no_model_gets_503(kafka, topics, serving, tmp_path, model):
    s = serving().start(wait_ready=False)
    s.wait_up()
    r = httpx.post(f"{s.url}/v1/predict", json=raw_event("b", START, 1))
    assert r.status_code == 503 and r.headers["retry-after"] and "model" in r.json()["detail"]
    await publish(kafka, topics, model_version(FRAUD, str(tmp_path / "artifacts"), model, name="lr", version=1,
                                               stage="champion"))
    s.wait_ready()
    cases = [
        ({**raw_event("b", START, 2), "amount": "12"}, "amount", "wrong_type"),
        ({**raw_event("b", START, 3), "extra": 1}, "extra", "unknown_field"),
        ({k: v for k, v in raw_event("b", START, 4).items() if k != "user_id"}, "user_id", "missing"),
        ({**raw_event("b", START, 5), "country": "XX"}, "country", "not_allowed_value"),
    ]
    for body, field, code in cases:
        r = httpx.post(f"{s.url}/v1/predict", json=body)
        assert r.status_code == 422, r.text
        assert {(x["field"], x["code"]) for x in r.json()["rejected"]} >= {(field, code)}
    nan = httpx.post(f"{s.url}/v1/predict", content=b'{"amount": NaN}', headers={"content-type": "application/json"})
    assert nan.status_code == 422 and nan.json()["rejected"][0]["code"] == "invalid_json"
    big = httpx.post(f"{s.url}/v1/predict", content=b"[" + b"1," * 600_000 + b"1]",
                     headers={"content-type": "application/json"})
    assert big.status_code == 413
    batch = httpx.post(f"{s.url}/v1/predict/batch", json=[raw_event("b", START, 6), {**raw_event("b", START, 7),
                                                                                     "amount": -1}])
    assert batch.status_code == 422 and batch.json()["rejected"][0]["index"] == 1
    for r in (batch, big, nan):
        assert "Traceback" not in r.text
