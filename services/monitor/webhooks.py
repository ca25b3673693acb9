"""On-call webhook subscriptions: the store (compacted topic `subscriptions`), the URL guard, signing
and payload templates, and the dispatcher that delivers every alert to every matching subscription.

Delivery contract (what a receiver can rely on):

- A POST with a JSON body and Standard Webhooks headers: `webhook-id`, `webhook-timestamp` (the
  attempt's Unix time) and `webhook-signature` ("v1," + base64 HMAC-SHA256 over
  "{id}.{timestamp}.{body}" keyed with the secret's decoded bytes). Any Standard Webhooks library
  verifies it; the signing itself is the reference `standardwebhooks` package's.
- `webhook-id` is a digest of (subscription id, alert fingerprint, status, updated_at): the same
  alert record to the same subscription always carries the same id, across retries and monitor
  restarts (and when the alert producer writes the same finding twice), so receivers dedup by it.
- At least once: the `alerts` offset of a record is committed only after every delivery it caused
  is done (delivered, dead-lettered, or dropped because its subscription was disabled or deleted);
  a crash before that redelivers it after restart, with the same ids.
- Retries: network errors, timeouts, 429 (its Retry-After honoured, capped at `backoff_max_s`) and
  5xx, with exponential backoff and full jitter, up to `max_attempts`; other 4xx and 3xx (redirects
  are never followed) are not retried; 410 Gone disables the subscription (a new record on the
  topic with disabled=true and the reason). A delivery given up goes to `alerts.deliveries.dlq`:
  the payload as value, key = subscription id, the reason in dlq.* headers.
- Each subscription has its own lane (deliveries in alert order, one at a time, with its own HTTP
  connection), so a slow or failing receiver delays only itself; its waiting deliveries are bounded
  (`queue_max`, more are dead-lettered with reason `backlog`).
- SSRF guard: a URL's host is resolved and every address that is loopback, private, link-local,
  multicast, reserved, unspecified or otherwise not global is refused unless the host or address is
  in the allow-list; the check runs at POST and again before every attempt, and the attempt
  connects to the address just checked (the Host header and TLS SNI name the original host), so a
  DNS answer that changes in between (rebinding) cannot redirect it. No proxies from the
  environment are used (a proxy would resolve the name again).

Subscription records hold their secrets (the monitor must sign after a restart): the topic is as
sensitive as the secrets themselves.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import email.utils
import hashlib
import ipaddress
import logging
import random
import secrets
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal, NamedTuple
from urllib.parse import parse_qs

import httpx
from aiokafka import ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import RecordMetadata
from pydantic import ValidationError
from standardwebhooks import Webhook

from services.monitor.metrics import MonitorMetrics
from shared.errors import LooplineError
from shared.events import Alert, Subscription
from shared.kafka import DLQ_MAX_VALUE_BYTES, OutRecord, dead_letter_headers, make_consumer, partitions_of
from shared.serialization import dumps, to_utc
from shared.settings import KafkaSettings

log = logging.getLogger(__name__)

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32  # generated secrets; Standard Webhooks asks for 24 to 64 bytes
MIN_SECRET_BYTES, MAX_SECRET_BYTES = 24, 64
USER_AGENT = "Loopline-Monitor/1 (webhooks)"


# ---------------------------------------------------------------- secrets, ids, signatures

def new_secret() -> str:
    """A fresh Standard Webhooks secret: 'whsec_' + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_problem(secret: str) -> str | None:
    """Why `secret` is not a usable Standard Webhooks secret, or None."""
    if not secret.startswith(SECRET_PREFIX):
        return f"a secret starts with '{SECRET_PREFIX}'"
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX):], validate=True)
    except ValueError:
        return "after 'whsec_' a secret is standard base64"
    if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
        return f"a secret holds {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes (this one {len(key)})"
    return None


def webhook_id(subscription_id: str, alert: Alert) -> str:
    """The delivery's stable id: one alert record (fingerprint, status, updated_at) to one subscription."""
    updated = to_utc(alert.updated_at).isoformat()
    digest = hashlib.sha256(f"{subscription_id}\n{alert.fingerprint}\n{alert.status}\n{updated}".encode()).digest()
    return "msg_" + base64.b32encode(digest).decode().rstrip("=").lower()[:32]


def signed_headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """Standard Webhooks headers for one attempt (signed by the reference `standardwebhooks` package)."""
    signature = Webhook(secret).sign(msg_id, datetime.fromtimestamp(timestamp, tz=timezone.utc), body.decode())
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp), "webhook-signature": signature}


# ---------------------------------------------------------------- payload templates

def _summary(alert: Alert) -> str:
    model = f" — model {alert.model_name}" + (f" v{alert.model_version}" if alert.model_version is not None else "") \
        if alert.model_name else ""
    what = f"{alert.statistic or 'value'} {alert.value:.4g} (threshold {alert.threshold:.4g})"
    return f"[{alert.status.upper()}] {alert.severity} {alert.kind} on {alert.subject}: {what}{model}"


def render(subscription: Subscription, alert: Alert) -> bytes:
    """The body POSTed for `alert` in the subscription's template (the same bytes on every attempt)."""
    data = alert.model_dump(mode="json")
    event = f"alert.{alert.status}"
    if subscription.template == "slack":
        icon = ":rotating_light:" if alert.status == "firing" else ":white_check_mark:"
        text = f"{icon} {_summary(alert)}"
        context = f"fingerprint `{alert.fingerprint}` · window {alert.window} · since {data['started_at']}"
        return dumps({"text": text, "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": text}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": context}]}]})
    if subscription.template == "pagerduty":
        body: dict[str, Any] = {
            "event_action": "trigger" if alert.status == "firing" else "resolve",
            "dedup_key": alert.fingerprint,
            "payload": {"summary": _summary(alert)[:1024], "source": "loopline-monitor",
                        "severity": alert.severity, "timestamp": data["updated_at"],
                        "component": alert.model_name or "", "group": alert.kind,
                        "class": alert.statistic or alert.kind, "custom_details": data}}
        # The routing key rides in the URL's fragment (…/v2/enqueue#routing_key=R0…): never sent as part of the URL.
        routing_key = parse_qs(httpx.URL(subscription.url).fragment).get("routing_key")
        if routing_key:
            body = {"routing_key": routing_key[0], **body}
        return dumps(body)
    return dumps({"type": event, "timestamp": data["updated_at"], "data": data})


# ---------------------------------------------------------------- the URL guard (SSRF)

class UrlRefused(LooplineError):
    """A webhook URL that may not be called: `code` is bad_url, forbidden_address or unresolvable."""

    def __init__(self, code: str, reason: str):
        super().__init__(reason)
        self.code, self.reason = code, reason


class Unresolvable(UrlRefused):
    """The host does not resolve (now): refused at POST, retried at delivery."""

    def __init__(self, reason: str):
        super().__init__("unresolvable", reason)


_NAT64 = ipaddress.ip_network("64:ff9b::/96")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _embedded_v4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, NAT64, 6to4), whose class decides."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip in _NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if ip.sixtofour is not None:
            return ip.sixtofour
    return None


def address_problem(ip: IPAddress) -> str | None:
    """What kind of non-public address `ip` is (loopback, private, ...), or None for a global one."""
    embedded = _embedded_v4(ip)
    candidate = embedded if embedded is not None else ip
    for kind in ("unspecified", "loopback", "link_local", "multicast", "private", "reserved"):
        if getattr(candidate, f"is_{kind}"):
            return kind.replace("_", "-")
    if not candidate.is_global:
        return "non-global"
    return None


Resolver = Callable[[str, int], Awaitable[list[str]]]


async def resolve_host(host: str, port: int) -> list[str]:
    """The addresses a host name (or literal) resolves to, in the resolver's order, once each."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                         proto=socket.IPPROTO_TCP)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class Target(NamedTuple):
    """Where one attempt goes: the URL with the checked address as host, and the original name."""

    url: httpx.URL
    address: str
    host_header: str
    sni_hostname: str | None


class UrlGuard:
    """Checks webhook URLs against non-public addresses, with an allow-list of hosts and CIDRs."""

    def __init__(self, allow: Iterable[str] = (), resolve: Resolver = resolve_host):
        self.hosts: set[str] = set()
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in allow:
            entry = entry.strip()
            if not entry:
                continue
            try:
                self.networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                self.hosts.add(entry.lower().rstrip("."))
        self._resolve = resolve

    @staticmethod
    def parse(url: str) -> httpx.URL:
        """The URL if it is an absolute http(s) URL with a host and without credentials (else UrlRefused)."""
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, ValueError, TypeError) as exc:
            raise UrlRefused("bad_url", f"not a valid URL: {exc}") from None
        if parsed.scheme not in ("http", "https"):
            raise UrlRefused("bad_url", "the URL's scheme must be http or https")
        if not parsed.host:
            raise UrlRefused("bad_url", "the URL has no host")
        if parsed.userinfo:
            raise UrlRefused("bad_url", "credentials in the URL are not supported (receivers verify the signature)")
        return parsed

    def allowed(self, host: str, ip: IPAddress | None) -> bool:
        return host in self.hosts or (ip is not None and any(ip in net for net in self.networks))

    async def check(self, url: str) -> Target:
        """Resolve the URL's host and pick the first address that may be called; UrlRefused if none
        may (Unresolvable if the name does not resolve)."""
        parsed = self.parse(url)
        host = parsed.raw_host.decode("ascii").lower().rstrip(".")
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            addresses = await self._resolve(host, port)
        except (OSError, UnicodeError) as exc:
            raise Unresolvable(f"{host} does not resolve: {exc}") from None
        if not addresses:
            raise Unresolvable(f"{host} does not resolve to any address")
        refused: list[str] = []
        for address in addresses:
            try:
                ip = ipaddress.ip_address(address)
            except ValueError:
                refused.append(f"{address} (not an IP address)")
                continue
            problem = address_problem(ip)
            if problem is None or self.allowed(host, ip):
                literal = address.split("%", 1)[0]
                sni = None if _is_ip_literal(host) else host
                return Target(parsed.copy_with(host=literal, fragment=None), literal,
                              parsed.netloc.decode("ascii"), sni if parsed.scheme == "https" else None)
            refused.append(f"{address} ({problem})")
        raise UrlRefused("forbidden_address", f"{host} resolves only to addresses webhooks may not call: "
                                              f"{', '.join(refused)}; the webhook_allow setting can permit them")


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


# ---------------------------------------------------------------- retry timing

def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds a Retry-After header asks to wait (delta-seconds or an HTTP date), or None if absent/invalid."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def backoff_delay(attempt: int, base_s: float, cap_s: float, retry_after_s: float | None = None,
                  rng: random.Random | None = None) -> float:
    """Wait before attempt `attempt + 1`: Retry-After if the receiver sent one, else full jitter
    (uniform between 0 and base·2^(attempt-1)); never more than `cap_s`."""
    if retry_after_s is not None:
        return min(retry_after_s, cap_s)
    ceiling = min(cap_s, base_s * 2 ** min(attempt - 1, 62))
    return (rng or random).uniform(0, ceiling)


# ---------------------------------------------------------------- the subscription store

class SubscriptionStore:
    """The subscriptions as the compacted topic has them. Records apply in offset order per id: a
    record older than the one in effect (e.g. the follower catching up after a local write) is
    ignored, so a write applied at once by its writer never flaps back."""

    def __init__(self, metrics: MonitorMetrics | None = None):
        self._subs: dict[str, Subscription] = {}
        self._offsets: dict[str, int] = {}  # id -> offset of the record in effect (tombstones included)
        self.loaded = asyncio.Event()  # set once the topic was read to its end at startup
        self._metrics = metrics

    def apply(self, key: bytes | None, value: bytes | None, offset: int) -> None:
        if not key:
            return
        sid = key.decode(errors="replace")
        if offset <= self._offsets.get(sid, -1):
            return
        self._offsets[sid] = offset
        if value is None:
            self._subs.pop(sid, None)
        else:
            try:
                self._subs[sid] = Subscription.model_validate_json(value)
            except ValidationError:
                log.warning("a record on the subscriptions topic is not a Subscription; ignored", extra={"key": sid})
        self._count()

    def _count(self) -> None:
        if self._metrics is not None:
            disabled = sum(1 for s in self._subs.values() if s.disabled)
            self._metrics.subscriptions.labels("enabled").set(len(self._subs) - disabled)
            self._metrics.subscriptions.labels("disabled").set(disabled)

    def get(self, sid: str) -> Subscription | None:
        return self._subs.get(sid)

    def all(self) -> list[Subscription]:
        return sorted(self._subs.values(), key=lambda s: (s.created_at, s.id))

    def matching(self, alert: Alert) -> list[Subscription]:
        """The enabled subscriptions whose filters all match the alert."""
        return [s for s in self._subs.values() if s.matches(alert)]

    def __len__(self) -> int:
        return len(self._subs)


async def follow_subscriptions(kafka: KafkaSettings, topic: str, store: SubscriptionStore) -> None:
    """Read the subscriptions topic from the beginning into `store`, set `store.loaded` once at the
    end offsets of the start, then keep applying new records forever (cancel to stop)."""
    consumer = make_consumer(kafka, group_id=None)
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in sorted(await partitions_of(consumer, topic))]
        ends = await consumer.end_offsets(parts)
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        while True:
            if not store.loaded.is_set() and all([await consumer.position(tp) >= ends[tp] for tp in parts]):
                store.loaded.set()
                log.info("subscriptions loaded", extra={"subscriptions": len(store)})
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for r in records:
                    store.apply(r.key, r.value, r.offset)
    finally:
        await consumer.stop()


# ---------------------------------------------------------------- delivery

Send = Callable[[OutRecord], Awaitable[RecordMetadata]]


@dataclass(frozen=True)
class DeliveryPolicy:
    timeout_s: float = 10.0
    max_attempts: int = 8
    backoff_s: float = 0.5
    backoff_max_s: float = 300.0
    queue_max: int = 1000
    lane_idle_s: float = 60.0  # a subscription's lane (task and connection) ends after this long without work

    @classmethod
    def from_settings(cls, s: Any) -> DeliveryPolicy:
        return cls(timeout_s=s.webhook_timeout_s, max_attempts=s.webhook_max_attempts, backoff_s=s.webhook_backoff_s,
                   backoff_max_s=s.webhook_backoff_max_s, queue_max=s.webhook_queue_max)


class Attempt(NamedTuple):
    """How one attempt ended: `result` is the metrics label, `retry` whether another may follow."""

    result: Literal["success", "gone", "throttled", "server_error", "client_error", "redirect", "timeout",
                    "network", "dns", "refused"]
    retry: bool
    status: int | None = None
    reason: str = ""
    retry_after_s: float | None = None


@dataclass
class _Work:
    """One alert record's deliveries still outstanding; `done()` once none is."""

    remaining: int
    done: Callable[[], None]

    def finish_one(self) -> None:
        self.remaining -= 1
        if self.remaining == 0:
            self.done()


@dataclass
class Delivery:
    subscription_id: str
    alert: Alert
    record: ConsumerRecord
    webhook_id: str
    read_at: float
    work: _Work
    finished: bool = False


@dataclass
class _Lane:
    subscription_id: str
    jobs: deque[Delivery] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


def make_client(policy: DeliveryPolicy) -> httpx.AsyncClient:
    # trust_env=False: a proxy from the environment would resolve the host again, past the guard.
    return httpx.AsyncClient(timeout=httpx.Timeout(policy.timeout_s), follow_redirects=False, trust_env=False,
                             headers={"user-agent": USER_AGENT},
                             limits=httpx.Limits(max_connections=2, max_keepalive_connections=1))


class Dispatcher:
    """Delivers alert records to the matching subscriptions (see the module docstring)."""

    def __init__(self, store: SubscriptionStore, guard: UrlGuard, policy: DeliveryPolicy, send: Send,
                 subscriptions_topic: str, dlq_topic: str, metrics: MonitorMetrics,
                 client_factory: Callable[[], httpx.AsyncClient] | None = None, rng: random.Random | None = None):
        self.store, self.guard, self.policy, self._send = store, guard, policy, send
        self.subscriptions_topic, self.dlq_topic, self.metrics = subscriptions_topic, dlq_topic, metrics
        self._client_factory = client_factory or (lambda: make_client(policy))
        self._rng = rng or random.Random()
        self._lanes: dict[str, _Lane] = {}
        self._background: set[asyncio.Task[None]] = set()
        self.queued = 0

    # -------------------------------------------------------------- intake

    def submit(self, record: ConsumerRecord, done: Callable[[], None]) -> int:
        """Start the deliveries of one `alerts` record; `done()` runs once all are finished (at once
        for a tombstone, an unreadable record or no matching subscription). Returns how many."""
        if record.value is None:
            done()
            return 0
        try:
            alert = Alert.model_validate_json(record.value)
        except ValidationError:
            log.warning("a record on the alerts topic is not an Alert; not delivered",
                        extra={"partition": record.partition, "offset": record.offset})
            done()
            return 0
        subs = self.store.matching(alert)
        if not subs:
            done()
            return 0
        work = _Work(len(subs), done)
        now = time.monotonic()
        for sub in subs:
            job = Delivery(sub.id, alert, record, webhook_id(sub.id, alert), now, work)
            self.queued += 1
            self.metrics.queued.inc()
            lane = self._lanes.get(sub.id)
            if lane is None:
                lane = self._lanes[sub.id] = _Lane(sub.id)
                lane.task = asyncio.create_task(self._run_lane(lane), name=f"webhook-lane-{sub.id}")
            if len(lane.jobs) >= self.policy.queue_max:
                self._in_background(self._dead_letter(job, sub, render(sub, alert), "backlog", None, 0,
                                                      f"more than {self.policy.queue_max} deliveries waiting"))
                continue
            lane.jobs.append(job)
            lane.wake.set()
        return len(subs)

    def _in_background(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        """Stop every lane; deliveries not finished stay uncommitted (redelivered after a restart)."""
        tasks = [lane.task for lane in self._lanes.values() if lane.task is not None] + list(self._background)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._lanes.clear()
        self.metrics.queued.dec(self.queued)
        self.queued = 0

    # -------------------------------------------------------------- one subscription's lane

    async def _run_lane(self, lane: _Lane) -> None:
        client = self._client_factory()
        try:
            while True:
                if not lane.jobs:
                    lane.wake.clear()
                    try:
                        async with asyncio.timeout(self.policy.lane_idle_s):
                            await lane.wake.wait()
                    except TimeoutError:
                        if not lane.jobs and self._lanes.get(lane.subscription_id) is lane:
                            del self._lanes[lane.subscription_id]  # no await since the check: nothing slips in
                            return
                    continue
                job = lane.jobs[0]
                await self._deliver(client, job)
                lane.jobs.popleft()
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(client.aclose())

    def _finish(self, job: Delivery, outcome: str) -> None:
        if job.finished:
            return
        job.finished = True
        self.queued -= 1
        self.metrics.queued.dec()
        self.metrics.deliveries.labels(outcome).inc()
        if outcome == "delivered":
            self.metrics.delivery_seconds.observe(time.monotonic() - job.read_at)
        job.work.finish_one()

    async def _deliver(self, client: httpx.AsyncClient, job: Delivery) -> None:
        attempt = 0
        while True:
            sub = self.store.get(job.subscription_id)
            if sub is None:  # deleted meanwhile
                self._finish(job, "dropped")
                return
            if sub.disabled:
                self._finish(job, "disabled")
                return
            body = render(sub, job.alert)
            attempt += 1
            result = await self.attempt(client, sub, job.webhook_id, body)
            self.metrics.attempts.labels(result.result).inc()
            if result.result == "success":
                self._finish(job, "delivered")
                return
            if result.result == "gone":
                when = datetime.now(timezone.utc)
                await self._disable(sub, f"the receiver answered 410 Gone on {when:%Y-%m-%dT%H:%M:%SZ}")
                self._finish(job, "disabled")
                return
            if not result.retry or attempt >= self.policy.max_attempts:
                code = result.result if not result.retry else "max_attempts"
                await self._dead_letter(job, sub, body, code, result.status, attempt, result.reason)
                return
            delay = backoff_delay(attempt, self.policy.backoff_s, self.policy.backoff_max_s, result.retry_after_s,
                                  self._rng)
            log.info("webhook delivery retries", extra={"subscription": sub.id, "webhook_id": job.webhook_id,
                                                        "attempt": attempt, "result": result.result,
                                                        "status": result.status, "delay_s": round(delay, 3)})
            await asyncio.sleep(delay)

    async def attempt(self, client: httpx.AsyncClient, sub: Subscription, msg_id: str, body: bytes) -> Attempt:
        """One POST of `body` to the subscription's URL: checked, signed, bounded by the timeout."""
        try:
            target = await self.guard.check(sub.url)
        except Unresolvable as exc:
            return Attempt("dns", True, reason=exc.reason)
        except UrlRefused as exc:
            return Attempt("refused", False, reason=exc.reason)
        headers = {**signed_headers(sub.secret, msg_id, int(time.time()), body),
                   "content-type": "application/json", "host": target.host_header}
        extensions = {"sni_hostname": target.sni_hostname} if target.sni_hostname else {}
        try:
            async with asyncio.timeout(self.policy.timeout_s):  # the whole exchange, not each read
                async with client.stream("POST", target.url, content=body, headers=headers,
                                         extensions=extensions) as response:
                    status, retry_after = response.status_code, response.headers.get("retry-after")
        except (TimeoutError, httpx.TimeoutException):
            return Attempt("timeout", True, reason=f"no answer within {self.policy.timeout_s:g}s")
        except httpx.HTTPError as exc:
            return Attempt("network", True, reason=f"{type(exc).__name__}: {exc}"[:500])
        if 200 <= status < 300:
            return Attempt("success", False, status)
        if status == 410:
            return Attempt("gone", False, status, "410 Gone")
        if status == 429:
            return Attempt("throttled", True, status, "429 Too Many Requests", retry_after_seconds(retry_after))
        if status >= 500:
            return Attempt("server_error", True, status, f"HTTP {status}")
        if 300 <= status < 400:
            return Attempt("redirect", False, status, f"HTTP {status} (redirects are not followed)")
        return Attempt("client_error", False, status, f"HTTP {status}")

    # -------------------------------------------------------------- outcomes that write to Kafka

    async def _produce(self, record: OutRecord) -> RecordMetadata:
        """Send until acknowledged: a delivery cannot finish before its record is on the broker (its
        alert is not committed meanwhile)."""
        failures = 0
        while True:
            try:
                return await self._send(record)
            except Exception as exc:  # noqa: BLE001 - broker trouble: retried, the commit waits
                failures += 1
                log.warning("cannot write a webhook record; retrying",
                            extra={"topic": record.topic, "error": repr(exc), "failures": failures})
                await asyncio.sleep(backoff_delay(failures, 0.5, 10.0, rng=self._rng))

    async def _dead_letter(self, job: Delivery, sub: Subscription, body: bytes, code: str, status: int | None,
                           attempts: int, reason: str) -> None:
        error = DeliveryFailed(f"{reason} (after {attempts} attempt{'s' if attempts != 1 else ''})")
        headers = dead_letter_headers(job.record, error, "monitor", code)
        headers += [("dlq.reason", str(error).encode()), ("dlq.status", str(status or "").encode()),
                    ("dlq.attempts", str(attempts).encode()), ("dlq.subscription", sub.id.encode()),
                    ("dlq.webhook_id", job.webhook_id.encode()), ("dlq.template", sub.template.encode())]
        if len(body) > DLQ_MAX_VALUE_BYTES:
            headers.append(("dlq.value.truncated", str(len(body)).encode()))
            body = body[:DLQ_MAX_VALUE_BYTES]
        await self._produce(OutRecord(self.dlq_topic, sub.id.encode(), body, headers))
        self.metrics.dead_letters.labels(code).inc()
        log.warning("webhook delivery dead-lettered", extra={"subscription": sub.id, "webhook_id": job.webhook_id,
                                                             "code": code, "reason": str(error)})
        self._finish(job, "dead_lettered")

    async def _disable(self, sub: Subscription, reason: str) -> None:
        current = self.store.get(sub.id)
        if current is None or current.disabled:
            return
        updated = current.model_copy(update={"disabled": True, "disabled_reason": reason})
        key, value = sub.id.encode(), updated.model_dump_json().encode()
        meta = await self._produce(OutRecord(self.subscriptions_topic, key, value))
        self.store.apply(key, value, meta.offset)
        log.warning("webhook subscription disabled", extra={"subscription": sub.id, "reason": reason})


class DeliveryFailed(LooplineError):
    """A webhook delivery given up (the dead letter's dlq.error.* headers)."""


# ---------------------------------------------------------------- the alerts consumer

class CommitWindow:
    """Per partition, the alert offsets read whose deliveries are not all done. What may be committed
    is the first such offset (or, with none, the next to read): never past an unfinished alert."""

    def __init__(self) -> None:
        self._open: dict[TopicPartition, dict[int, None]] = {}  # insertion (= offset) order
        self._next: dict[TopicPartition, int] = {}
        self._generation: dict[TopicPartition, int] = {}

    def open(self, tp: TopicPartition, offset: int) -> Callable[[], None]:
        """Record that `offset` was read; returns what to call once its deliveries are done."""
        self._open.setdefault(tp, {})[offset] = None
        self._next[tp] = offset + 1
        generation = self._generation.get(tp, 0)

        def done() -> None:
            if self._generation.get(tp, 0) == generation:  # not from before a revocation
                self._open.get(tp, {}).pop(offset, None)
        return done

    def committable(self) -> dict[TopicPartition, int]:
        out = {}
        for tp, following in self._next.items():
            pending = self._open.get(tp)
            out[tp] = next(iter(pending)) if pending else following
        return out

    def pending(self) -> int:
        return sum(len(p) for p in self._open.values())

    def drop(self, tps: Iterable[TopicPartition]) -> None:
        for tp in tps:
            self._open.pop(tp, None)
            self._next.pop(tp, None)
            self._generation[tp] = self._generation.get(tp, 0) + 1


@dataclass
class DeliveryState:
    """What readiness reports about the alerts consumer."""

    running: bool = False
    committed: dict[str, int] = field(default_factory=dict)
    error: str = ""


async def run_deliveries(kafka: KafkaSettings, topic: str, group: str, store: SubscriptionStore,
                         make_dispatcher: Callable[[], Dispatcher], metrics: MonitorMetrics, *,
                         commit_interval_s: float = 1.0, max_pending: int = 10000,
                         state: DeliveryState | None = None) -> None:
    """Consume `alerts` in consumer group `group` and deliver each record (forever; cancel to stop).

    Waits for the subscriptions to be loaded first (an alert matched against a half-read store would
    miss subscriptions and be committed). Offsets are committed every `commit_interval_s` up to the
    first alert not yet done; reading pauses while `max_pending` alerts are not done. After a broker
    error the consumer and the deliveries in progress are restarted from the last commit."""
    state = state or DeliveryState()
    await store.loaded.wait()
    failures = 0
    while True:
        dispatcher = make_dispatcher()
        window = CommitWindow()
        try:
            await _consume(kafka, topic, group, dispatcher, window, metrics, commit_interval_s, max_pending, state)
        except (KafkaError, CommitFailedError) as exc:
            failures += 1
            state.running, state.error = False, repr(exc)
            log.warning("alerts consumer restarts", extra={"error": repr(exc), "failures": failures})
            await asyncio.sleep(backoff_delay(failures, 0.5, 10.0))
        finally:
            await dispatcher.close()
            metrics.pending_alerts.set(0)


async def _consume(kafka: KafkaSettings, topic: str, group: str, dispatcher: Dispatcher, window: CommitWindow,
                   metrics: MonitorMetrics, commit_interval_s: float, max_pending: int, state: DeliveryState) -> None:
    consumer = make_consumer(kafka, group_id=group, max_poll_records=500)
    committed: dict[TopicPartition, int] = {}

    async def commit(parts: Iterable[TopicPartition] | None = None) -> None:
        wanted = {tp: o for tp, o in window.committable().items()
                  if (parts is None or tp in parts) and committed.get(tp) != o}
        if wanted:
            await consumer.commit(wanted)
            committed.update(wanted)
            state.committed = {f"{tp.topic}:{tp.partition}": o for tp, o in committed.items()}

    class Listener(ConsumerRebalanceListener):
        async def on_partitions_revoked(self, revoked: Any) -> None:
            with contextlib.suppress(KafkaError, CommitFailedError):
                await commit(set(revoked))
            window.drop(revoked)  # their deliveries in progress no longer count; the new owner redelivers
            for tp in revoked:
                committed.pop(tp, None)

        async def on_partitions_assigned(self, assigned: Any) -> None:
            pass

    consumer.subscribe([topic], listener=Listener())
    await consumer.start()
    state.running, state.error = True, ""
    paused = False
    last_commit = time.monotonic()
    try:
        while True:
            if window.pending() >= max_pending and not paused:
                consumer.pause(*consumer.assignment())
                paused = True
            elif paused and window.pending() < max_pending:
                consumer.resume(*consumer.paused())
                paused = False
            batches = await consumer.getmany(timeout_ms=200)
            for tp, records in batches.items():
                for r in records:
                    dispatcher.submit(r, window.open(tp, r.offset))
            metrics.pending_alerts.set(window.pending())
            if time.monotonic() - last_commit >= commit_interval_s:
                await commit()
                last_commit = time.monotonic()
    finally:
        state.running = False
        with contextlib.suppress(Exception):
            await asyncio.shield(commit())  # what is done is done: not redelivered after a clean stop
        with contextlib.suppress(Exception):
            await asyncio.shield(consumer.stop())


async def kafka_send(get_producer: Callable[[], Any], record: OutRecord, timeout_s: float) -> RecordMetadata:
    """Produce one record and wait for its acknowledgement (TimeoutError after `timeout_s`)."""
    async with asyncio.timeout(timeout_s):
        future = await get_producer().send(record.topic, record.value, key=record.key, headers=record.headers)
        return await future


# ---------------------------------------------------------------- managing subscriptions

class SubscriptionLimit(LooplineError):
    """No more subscriptions may be created (answer 409)."""


@dataclass
class Webhooks:
    """What the subscription routes and the background tasks share."""

    store: SubscriptionStore
    guard: UrlGuard
    send: Send
    topic: str  # the subscriptions topic
    max_subscriptions: int = 1000
    deliveries: DeliveryState = field(default_factory=DeliveryState)

    async def create(self, url: str, kinds: list[str], severities: list[str], models: list[str],
                     template: str, secret: str | None, now: datetime) -> Subscription:
        """Check the URL (UrlRefused), write the subscription to the topic and apply it: the caller
        reads its own write at once. A secret is generated when none is given."""
        await self.guard.check(url)
        if len(self.store) >= self.max_subscriptions:
            raise SubscriptionLimit(f"there are {len(self.store)} subscriptions; the limit is {self.max_subscriptions}")
        sub = Subscription(id=f"sub-{secrets.token_hex(12)}", url=url, kinds=kinds, severities=severities,
                           models=models, secret=secret or new_secret(), template=template, created_at=now)
        key, value = sub.id.encode(), sub.model_dump_json().encode()
        meta = await self.send(OutRecord(self.topic, key, value))
        self.store.apply(key, value, meta.offset)
        return sub

    async def delete(self, sid: str) -> bool:
        """Write the subscription's tombstone; False if there is no such subscription."""
        if self.store.get(sid) is None:
            return False
        meta = await self.send(OutRecord(self.topic, sid.encode(), None))
        self.store.apply(sid.encode(), None, meta.offset)
        return True

    def readiness(self) -> tuple[dict[str, bool], dict[str, str]]:
        checks = {"subscriptions_loaded": self.store.loaded.is_set(), "deliveries_running": self.deliveries.running}
        problems = {}
        if not checks["subscriptions_loaded"]:
            problems["subscriptions"] = "the subscriptions topic is being read"
        if not checks["deliveries_running"]:
            problems["deliveries"] = self.deliveries.error or "the alerts consumer is starting"
        return checks, problems
