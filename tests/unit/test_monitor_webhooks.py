"""services/monitor/webhooks without a broker: signatures (checked with the reference
`standardwebhooks` package), the URL guard, retry timing, templates, the dispatcher against a mock
transport, the commit window, the store and the subscription routes."""
from __future__ import annotations

import asyncio
import base64
import json
import random
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from types import SimpleNamespace

import httpx
import pytest
from aiokafka import TopicPartition
from fastapi import FastAPI
from standardwebhooks import Webhook, WebhookVerificationError

from services.monitor.api import subscriptions_router
from services.monitor.metrics import MonitorMetrics
from services.monitor.webhooks import (
    CommitWindow, DeliveryPolicy, Dispatcher, SubscriptionStore, Unresolvable, UrlGuard, UrlRefused, Webhooks,
    backoff_delay, new_secret, render, resolve_host, retry_after_seconds, secret_problem, signed_headers, webhook_id,
)
from shared.auth import ApiKeys, hash_key
from shared.events import Alert, Subscription
from shared.kafka import header_dict

T0 = datetime(2026, 11, 26, 10, 0, tzinfo=timezone.utc)


def alert(status: str = "firing", **over) -> Alert:
    fields = dict(fingerprint="fp-amount-psi", kind="data_drift", status=status, severity="warning",
                  subject="amount", statistic="psi", value=0.31, threshold=0.2, window=2000, model_name="gbm",
                  model_version=3, started_at=T0, updated_at=T0 + timedelta(minutes=5 if status == "resolved" else 0))
    fields.update(over)
    return Alert(**fields)


def subscription(url: str = "http://hooks.example.com/in", **over) -> Subscription:
    fields = dict(id="sub-1", url=url, secret=new_secret(), created_at=T0)
    fields.update(over)
    return Subscription(**fields)


def fixed(*addresses: str):
    async def resolve(host: str, port: int) -> list[str]:
        return list(addresses)
    return resolve


# ---------------------------------------------------------------- signatures and ids

def test_a_signature_verifies_with_the_reference_package_and_a_tampered_body_fails():
    secret = new_secret()
    body = render(subscription(secret=secret), alert())
    headers = signed_headers(secret, "msg_abc", int(datetime.now(timezone.utc).timestamp()), body)
    assert headers["webhook-signature"].startswith("v1,")
    assert Webhook(secret).verify(body, headers)["data"]["fingerprint"] == "fp-amount-psi"
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace(b"0.31", b"0.01"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):  # the id is signed too
        Webhook(secret).verify(body, {**headers, "webhook-id": "msg_other"})


def test_the_signature_is_hmac_sha256_over_id_timestamp_body_with_the_decoded_secret():
    import hashlib
    import hmac
    secret = new_secret()
    key = base64.b64decode(secret.removeprefix("whsec_"))
    body = b'{"a":1}'
    expected = base64.b64encode(hmac.new(key, b"msg_1.1700000000." + body, hashlib.sha256).digest()).decode()
    assert signed_headers(secret, "msg_1", 1700000000, body)["webhook-signature"] == f"v1,{expected}"


def test_generated_secrets_fit_the_record_and_bad_ones_are_explained():
    secret = new_secret()
    assert secret_problem(secret) is None and len(base64.b64decode(secret[6:])) == 32
    subscription(secret=secret)  # the record's own pattern accepts it
    assert secret_problem("nope") and "whsec_" in secret_problem("nope")
    assert "base64" in secret_problem("whsec_!!!!")
    assert "24 to 64" in secret_problem("whsec_" + base64.b64encode(b"short").decode())


def test_the_webhook_id_is_stable_per_alert_record_and_subscription():
    a = alert()
    assert webhook_id("sub-1", a) == webhook_id("sub-1", alert())
    assert webhook_id("sub-1", a) != webhook_id("sub-2", a)
    assert webhook_id("sub-1", a) != webhook_id("sub-1", alert("resolved"))
    assert webhook_id("sub-1", a).startswith("msg_") and len(webhook_id("sub-1", a)) == 36


# ---------------------------------------------------------------- templates

def test_the_standard_template_is_the_alert_with_its_event_type():
    body = json.loads(render(subscription(), alert()))
    assert body["type"] == "alert.firing" and body["data"]["subject"] == "amount"
    assert json.loads(render(subscription(), alert("resolved")))["type"] == "alert.resolved"


def test_the_slack_template_is_a_message_with_blocks():
    body = json.loads(render(subscription(template="slack"), alert()))
    assert set(body) == {"text", "blocks"} and "FIRING" in body["text"] and "amount" in body["text"]
    assert body["blocks"][0]["type"] == "section"
    assert "RESOLVED" in json.loads(render(subscription(template="slack"), alert("resolved")))["text"]


def test_the_pagerduty_template_triggers_and_resolves_by_fingerprint():
    sub = subscription("https://events.pagerduty.com/v2/enqueue#routing_key=R0UTE", template="pagerduty")
    fired, resolved = json.loads(render(sub, alert())), json.loads(render(sub, alert("resolved")))
    assert fired["event_action"] == "trigger" and resolved["event_action"] == "resolve"
    assert fired["dedup_key"] == resolved["dedup_key"] == "fp-amount-psi"
    assert fired["routing_key"] == "R0UTE" and fired["payload"]["severity"] == "warning"
    assert "routing_key" not in json.loads(render(subscription(template="pagerduty"), alert()))


# ---------------------------------------------------------------- the URL guard

@pytest.mark.parametrize("address,kind", [
    ("127.0.0.1", "loopback"), ("10.0.0.1", "private"), ("192.168.1.1", "private"), ("172.16.0.5", "private"),
    ("169.254.169.254", "link-local"), ("0.0.0.0", "unspecified"), ("224.0.0.1", "multicast"),
    ("100.64.0.1", "non-global"), ("::1", "loopback"), ("::", "unspecified"), ("fe80::1", "link-local"),
    ("fc00::1", "private"), ("ff02::1", "multicast"), ("::ffff:127.0.0.1", "loopback"),
    ("::ffff:10.0.0.1", "private"), ("64:ff9b::a00:1", "private"),
])
async def test_non_public_addresses_are_refused(address, kind):
    with pytest.raises(UrlRefused) as refused:
        await UrlGuard(resolve=fixed(address)).check("http://hooks.example.com/in")
    assert refused.value.code == "forbidden_address" and f"({kind})" in refused.value.reason


async def test_a_public_address_is_called_directly_with_the_original_host_and_sni():
    target = await UrlGuard(resolve=fixed("93.184.216.34")).check("https://Hooks.Example.com:8443/in?x=1#frag")
    assert str(target.url) == "https://93.184.216.34:8443/in?x=1" and target.host_header == "hooks.example.com:8443"
    assert target.sni_hostname == "hooks.example.com"
    v6 = await UrlGuard(resolve=fixed("2606:2800:220:1::1")).check("http://hooks.example.com/")
    assert v6.url.host == "2606:2800:220:1::1" and str(v6.url).startswith("http://[2606:2800:220:1::1]/")
    assert v6.sni_hostname is None  # plain http


async def test_ip_literals_and_numeric_spellings_are_checked_after_resolution():
    guard = UrlGuard()  # the real resolver
    for url in ["http://127.0.0.1/", "http://[::1]:8080/", "http://localhost/", "http://0x7f.1/",
                "http://2130706433/", "http://10.0.0.1/", "http://[::ffff:127.0.0.1]/"]:
        with pytest.raises(UrlRefused) as refused:
            await guard.check(url)
        assert refused.value.code == "forbidden_address", url


async def test_the_allow_list_takes_addresses_cidrs_and_hosts():
    assert (await UrlGuard(["127.0.0.1"]).check("http://127.0.0.1:9999/x")).address == "127.0.0.1"
    assert (await UrlGuard(["10.0.0.0/8"], resolve=fixed("10.2.3.4")).check("http://a.internal/")).address == "10.2.3.4"
    assert (await UrlGuard(["::1"]).check("http://[::1]:81/")).url.host == "::1"
    assert (await UrlGuard(["hooks.internal"], resolve=fixed("192.168.0.9")).check("http://hooks.internal/")).address
    with pytest.raises(UrlRefused):  # 10/8 does not cover 192.168/16
        await UrlGuard(["10.0.0.0/8"], resolve=fixed("192.168.0.9")).check("http://hooks.internal/")


async def test_a_mixed_answer_uses_only_an_address_that_passed():
    target = await UrlGuard(resolve=fixed("10.0.0.1", "93.184.216.34")).check("http://hooks.example.com/")
    assert target.address == "93.184.216.34"


async def test_dns_rebinding_is_caught_by_the_check_before_each_attempt():
    answers = iter([["93.184.216.34"], ["127.0.0.1"]])

    async def rebinding(host: str, port: int) -> list[str]:
        return next(answers)
    guard = UrlGuard(resolve=rebinding)
    await guard.check("http://rebind.example.com/")  # at POST time: public
    with pytest.raises(UrlRefused):  # at delivery time: loopback
        await guard.check("http://rebind.example.com/")


async def test_bad_and_unresolvable_urls():
    guard = UrlGuard(resolve=fixed("93.184.216.34"))
    for url in ["ftp://x.example.com/", "http:///nohost", "http://user:pw@x.example.com/", "not a url"]:
        with pytest.raises(UrlRefused) as refused:
            await guard.check(url)
        assert refused.value.code == "bad_url", url

    async def nxdomain(host: str, port: int) -> list[str]:
        raise OSError("Name or service not known")
    with pytest.raises(Unresolvable):
        await UrlGuard(resolve=nxdomain).check("http://nowhere.invalid/")
    assert await resolve_host("127.0.0.1", 80) == ["127.0.0.1"]


# ---------------------------------------------------------------- retry timing

def test_retry_after_takes_seconds_or_an_http_date():
    assert retry_after_seconds("7") == 7.0 and retry_after_seconds(" 0 ") == 0.0
    now = 1_800_000_000.0
    date = format_datetime(datetime.fromtimestamp(now + 30, tz=timezone.utc), usegmt=True)
    assert retry_after_seconds(date, now=now) == pytest.approx(30, abs=1)
    past = format_datetime(datetime.fromtimestamp(now - 30, tz=timezone.utc), usegmt=True)
    assert retry_after_seconds(past, now=now) == 0.0
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    assert retry_after_seconds("-5") is None


def test_backoff_is_full_jitter_exponential_capped_and_honours_retry_after_up_to_the_cap():
    rng = random.Random(1)
    for attempt in range(1, 12):
        ceiling = min(30.0, 0.5 * 2 ** (attempt - 1))
        delays = [backoff_delay(attempt, 0.5, 30.0, rng=rng) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays) and max(delays) > ceiling / 2
    assert backoff_delay(3, 0.5, 30.0, retry_after_s=12) == 12
    assert backoff_delay(3, 0.5, 30.0, retry_after_s=3600) == 30.0
    assert backoff_delay(10_000, 0.5, 30.0, rng=rng) <= 30.0  # no overflow


# ---------------------------------------------------------------- the dispatcher

class FakeKafka:
    """Records what the dispatcher writes; offsets count up."""

    def __init__(self):
        self.records = []

    async def send(self, record):
        self.records.append(record)
        return SimpleNamespace(offset=1000 + len(self.records), partition=0, topic=record.topic)


def record_of(a: Alert, offset: int = 0):
    return SimpleNamespace(topic="alerts", partition=0, offset=offset, key=a.fingerprint.encode(),
                           value=a.model_dump_json().encode(), headers=())


def dispatcher_with(handler, store, kafka, **policy):
    policy = DeliveryPolicy(**{"timeout_s": 2.0, "max_attempts": 4, "backoff_s": 0.001, "backoff_max_s": 0.01,
                               **policy})
    return Dispatcher(store, UrlGuard(resolve=fixed("93.184.216.34")), policy, kafka.send, "subscriptions",
                      "alerts.deliveries.dlq", MonitorMetrics(),
                      client_factory=lambda: httpx.AsyncClient(transport=httpx.MockTransport(handler)))


def store_with(*subs: Subscription) -> SubscriptionStore:
    store = SubscriptionStore()
    for i, s in enumerate(subs):
        store.apply(s.id.encode(), s.model_dump_json().encode(), i)
    store.loaded.set()
    return store


async def deliver(dispatcher: Dispatcher, *records) -> None:
    done = asyncio.Event()
    left = [len(records)]

    def one_done():
        left[0] -= 1
        if not left[0]:
            done.set()
    for r in records:
        dispatcher.submit(r, one_done)
    await asyncio.wait_for(done.wait(), 10)
    await dispatcher.close()


async def test_retries_on_5xx_then_delivers_with_one_id_signed_each_time_to_the_checked_address():
    sub = subscription()
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(500 if len(seen) < 3 else 204)
    kafka = FakeKafka()
    await deliver(dispatcher_with(handler, store_with(sub), kafka), record_of(alert()))
    assert len(seen) == 3 and not kafka.records
    assert {r.headers["webhook-id"] for r in seen} == {webhook_id(sub.id, alert())}
    for r in seen:
        assert r.url.host == "93.184.216.34" and r.headers["host"] == "hooks.example.com"
        Webhook(sub.secret).verify(r.content, dict(r.headers))


async def test_429_honours_retry_after_and_network_errors_are_retried():
    calls = []

    def handler(request):
        calls.append(1)
        if len(calls) == 1:
            raise httpx.ConnectError("refused")
        if len(calls) == 2:
            return httpx.Response(429, headers={"Retry-After": "0"})
        return httpx.Response(200)
    d = dispatcher_with(handler, store_with(subscription()), FakeKafka())
    await deliver(d, record_of(alert()))
    assert len(calls) == 3
    assert d.metrics.attempts.labels("throttled")._value.get() == 1
    assert d.metrics.attempts.labels("network")._value.get() == 1
    assert d.metrics.deliveries.labels("delivered")._value.get() == 1


async def test_a_4xx_is_not_retried_and_goes_to_the_dead_letters_with_its_reason():
    calls = []
    kafka = FakeKafka()
    sub = subscription()
    await deliver(dispatcher_with(lambda r: calls.append(1) or httpx.Response(400), store_with(sub), kafka),
                  record_of(alert(), offset=7))
    assert len(calls) == 1 and len(kafka.records) == 1
    dead = kafka.records[0]
    headers = header_dict(dead.headers)
    assert dead.topic == "alerts.deliveries.dlq" and dead.key == b"sub-1"
    assert json.loads(dead.value)["data"]["fingerprint"] == "fp-amount-psi"
    assert headers["dlq.error.code"] == "client_error" and headers["dlq.status"] == "400"
    assert headers["dlq.attempts"] == "1" and headers["dlq.subscription"] == "sub-1"
    assert headers["dlq.source.offset"] == "7" and "HTTP 400" in headers["dlq.reason"]


async def test_the_last_failed_attempt_dead_letters():
    kafka = FakeKafka()
    await deliver(dispatcher_with(lambda r: httpx.Response(503), store_with(subscription()), kafka, max_attempts=3),
                  record_of(alert()))
    headers = header_dict(kafka.records[0].headers)
    assert headers["dlq.error.code"] == "max_attempts" and headers["dlq.attempts"] == "3"
    assert headers["dlq.status"] == "503"


async def test_410_disables_the_subscription_with_a_new_record():
    sub = subscription()
    store, kafka = store_with(sub), FakeKafka()
    await deliver(dispatcher_with(lambda r: httpx.Response(410), store, kafka),
                  record_of(alert()), record_of(alert("resolved"), 1))
    assert len(kafka.records) == 1 and kafka.records[0].topic == "subscriptions"
    written = Subscription.model_validate_json(kafka.records[0].value)
    assert written.disabled and "410" in written.disabled_reason and written.secret == sub.secret
    assert store.get(sub.id).disabled and not store.matching(alert())


async def test_a_slow_receiver_does_not_hold_back_another_subscription():
    slow, fast = subscription("http://slow.example.com/", id="sub-slow"), subscription(id="sub-fast")
    release = asyncio.Event()
    fast_done = asyncio.Event()

    async def handler(request):
        if request.headers["host"] == "slow.example.com":
            await release.wait()
        else:
            fast_done.set()
        return httpx.Response(200)
    d = dispatcher_with(handler, store_with(slow, fast), FakeKafka())
    finished = asyncio.Event()
    d.submit(record_of(alert()), finished.set)
    await asyncio.wait_for(fast_done.wait(), 5)
    assert not finished.is_set()  # the alert is done only when both are
    release.set()
    await asyncio.wait_for(finished.wait(), 5)
    await d.close()


async def test_a_subscription_s_backlog_is_bounded_and_the_overflow_dead_lettered():
    release = asyncio.Event()

    async def handler(request):
        await release.wait()
        return httpx.Response(200)
    kafka = FakeKafka()
    d = dispatcher_with(handler, store_with(subscription()), kafka, queue_max=2)
    finished = []
    for i in range(4):
        d.submit(record_of(alert(fingerprint=f"fp-{i}"), offset=i), lambda i=i: finished.append(i))
    for _ in range(100):
        if len(kafka.records) == 2:
            break
        await asyncio.sleep(0.01)
    assert sorted(finished) == [2, 3]  # dead-lettered at once, so their offsets can be committed
    assert {header_dict(r.headers)["dlq.error.code"] for r in kafka.records} == {"backlog"}
    release.set()
    for _ in range(100):
        if len(finished) == 4:
            break
        await asyncio.sleep(0.01)
    assert sorted(finished) == [0, 1, 2, 3]
    await d.close()


async def test_an_idle_lane_ends_and_a_new_one_starts_with_the_next_alert():
    calls = []
    d = dispatcher_with(lambda r: calls.append(1) or httpx.Response(200), store_with(subscription()), FakeKafka(),
                        lane_idle_s=0.01)
    first, second = asyncio.Event(), asyncio.Event()
    d.submit(record_of(alert()), first.set)
    await asyncio.wait_for(first.wait(), 5)
    for _ in range(100):
        if not d._lanes:
            break
        await asyncio.sleep(0.01)
    assert not d._lanes
    d.submit(record_of(alert("resolved"), 1), second.set)
    await asyncio.wait_for(second.wait(), 5)
    assert len(calls) == 2
    await d.close()


async def test_filters_choose_the_subscriptions():
    store = store_with(subscription(id="sub-drift", kinds=["data_drift"]),
                       subscription(id="sub-critical", severities=["critical"]),
                       subscription(id="sub-logreg", models=["logreg"]), subscription(id="sub-all"))
    assert {s.id for s in store.matching(alert())} == {"sub-drift", "sub-all"}
    assert {s.id for s in store.matching(alert(kind="bias", severity="critical", model_name="logreg"))} == \
        {"sub-critical", "sub-logreg", "sub-all"}


# ---------------------------------------------------------------- commits and the store

def test_the_commit_window_never_passes_an_unfinished_alert():
    tp = TopicPartition("alerts", 0)
    w = CommitWindow()
    done = [w.open(tp, o) for o in range(5)]
    assert w.committable() == {tp: 0}
    done[1]()
    done[2]()
    assert w.committable() == {tp: 0} and w.pending() == 3
    done[0]()
    assert w.committable() == {tp: 3}
    done[4]()
    done[3]()
    assert w.committable() == {tp: 5} and w.pending() == 0
    late = w.open(tp, 5)
    w.drop([tp])
    fresh = w.open(tp, 5)  # read again after the partition came back
    late()  # the earlier life's completion does not count
    assert w.committable() == {tp: 5}
    fresh()
    assert w.committable() == {tp: 6}


def test_the_store_applies_records_in_offset_order_per_id():
    sub = subscription()
    disabled = sub.model_copy(update={"disabled": True})
    store = SubscriptionStore()
    store.apply(b"sub-1", disabled.model_dump_json().encode(), 5)  # a local write, applied at once
    store.apply(b"sub-1", sub.model_dump_json().encode(), 3)  # the follower catching up
    assert store.get("sub-1").disabled
    store.apply(b"sub-1", None, 6)
    assert store.get("sub-1") is None
    store.apply(b"sub-1", sub.model_dump_json().encode(), 5)
    assert store.get("sub-1") is None
    store.apply(b"sub-x", b"not json", 7)
    assert len(store) == 0


# ---------------------------------------------------------------- the routes

ADMIN = "admin-key-for-tests"


@pytest.fixture
async def api():
    kafka = FakeKafka()
    store = SubscriptionStore()
    store.loaded.set()
    hooks = Webhooks(store, UrlGuard(["127.0.0.1"]), kafka.send, "subscriptions", max_subscriptions=3)
    http = FastAPI()
    http.include_router(subscriptions_router(hooks, ApiKeys([f"{hash_key(ADMIN)}:admin",
                                                             f"{hash_key('predictor')}:predict"])))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=http), base_url="http://monitor",
                                 headers={"authorization": f"Bearer {ADMIN}"}) as client:
        yield client, kafka


async def test_post_get_delete_and_secrets_shown_once(api):
    client, kafka = api
    made = await client.post("/v1/subscriptions", json={"url": "http://127.0.0.1:9/in", "kinds": ["data_drift"]})
    assert made.status_code == 201, made.text
    body = made.json()
    assert secret_problem(body["secret"]) is None and made.headers["location"] == f"/v1/subscriptions/{body['id']}"
    assert kafka.records[0].key == body["id"].encode()
    assert Subscription.model_validate_json(kafka.records[0].value).secret == body["secret"]
    listed = (await client.get("/v1/subscriptions")).json()["subscriptions"]
    assert [s["id"] for s in listed] == [body["id"]] and "secret" not in listed[0]
    one = (await client.get(f"/v1/subscriptions/{body['id']}")).json()
    assert one["kinds"] == ["data_drift"] and "secret" not in one
    given = new_secret()
    again = await client.post("/v1/subscriptions", json={"url": "http://127.0.0.1:9/", "secret": given})
    assert again.json()["secret"] == given
    assert (await client.delete(f"/v1/subscriptions/{body['id']}")).status_code == 204
    assert kafka.records[-1].value is None
    assert (await client.get(f"/v1/subscriptions/{body['id']}")).status_code == 404
    assert (await client.delete(f"/v1/subscriptions/{body['id']}")).status_code == 404


async def test_bad_bodies_get_422_with_field_reasons(api):
    client, kafka = api
    cases = {
        '{"url": "ftp://x/"}': ("url", "bad_format"),
        '{"kinds": ["data_drift"]}': ("url", "missing"),
        '{"url": "http://127.0.0.1/", "kinds": ["nope"]}': ("kinds.0", "not_allowed_value"),
        '{"url": "http://127.0.0.1/", "severities": ["meh"]}': ("severities.0", "not_allowed_value"),
        '{"url": "http://127.0.0.1/", "template": "teams"}': ("template", "not_allowed_value"),
        '{"url": "http://127.0.0.1/", "secret": "plain"}': ("secret", "invalid"),
        '{"url": "http://127.0.0.1/", "colour": "red"}': ("colour", "unknown_field"),
        '{"url": "http://10.0.0.1/"}': ("url", "forbidden_address"),
        '{"url": "http://localhost/"}': ("url", None),  # localhost may resolve to ::1, which is not allowed
        '{"url": "http://[::1]/"}': ("url", "forbidden_address"),
        '{"url": "http://169.254.169.254/latest/meta-data"}': ("url", "forbidden_address"),
        '[1]': ("", "not_an_object"),
        '{"url": ': ("", "invalid_json"),
    }
    for raw, (field, code) in cases.items():
        r = await client.post("/v1/subscriptions", content=raw, headers={"content-type": "application/json"})
        if raw == '{"url": "http://localhost/"}' and r.status_code == 201:
            continue  # this machine's localhost is 127.0.0.1 only, which the fixture allows
        assert r.status_code == 422, (raw, r.text)
        problems = r.json()["rejected"]
        assert any(p["field"] == field and (code is None or p["code"] == code) for p in problems), (raw, problems)
    assert all(r.topic == "subscriptions" for r in kafka.records)


async def test_auth_limit_and_body_size(api):
    client, _ = api
    assert (await client.get("/v1/subscriptions", headers={"authorization": ""})).status_code == 401
    assert (await client.get("/v1/subscriptions", headers={"authorization": "Bearer predictor"})).status_code == 403
    assert (await client.get("/v1/subscriptions", headers={"authorization": "Bearer wrong"})).status_code == 403
    for _ in range(3):
        assert (await client.post("/v1/subscriptions", json={"url": "http://127.0.0.1/"})).status_code == 201
    assert (await client.post("/v1/subscriptions", json={"url": "http://127.0.0.1/"})).status_code == 409
    big = {"url": "http://127.0.0.1/", "models": ["m"] * 40000}
    assert (await client.post("/v1/subscriptions", json=big)).status_code == 413
