#!/usr/bin/env python
"""Seeded card transactions with delayed fraud labels for examples/fraud/pipeline.yaml (library and CLI)."""
from __future__ import annotations

import argparse
import bisect
import heapq
import itertools
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from itertools import accumulate

import httpx

CATEGORIES = ("grocery", "fuel", "restaurants", "travel", "electronics",
              "fashion", "gaming", "gift_cards", "pharmacy", "utilities")
# How often a typical cardholder shops in each category, and how large that purchase is vs. their usual spend.
_CAT_POPULARITY = (0.30, 0.12, 0.20, 0.03, 0.04, 0.09, 0.04, 0.01, 0.10, 0.07)
_CAT_SCALE = (1.0, 1.4, 0.8, 5.0, 3.5, 1.8, 0.4, 1.0, 0.6, 2.5)
COUNTRIES = ("DE", "FR", "ES", "IT", "NL", "PL", "GB", "US", "BR", "NG")
_HOME_WEIGHTS = (0.30, 0.20, 0.14, 0.13, 0.09, 0.08, 0.03, 0.015, 0.01, 0.005)
# Fraud from abroad comes disproportionately from a few countries.
_FRAUD_ORIGIN_WEIGHTS = (0.08, 0.08, 0.10, 0.10, 0.07, 0.07, 0.15, 0.15, 0.10, 0.10)
CHANNELS = ("pos", "web", "app")
MAX_AMOUNT = 50000.0
MAX_LABEL_DELAY_S = 7 * 86400  # the spec's label.max_delay

# Mean number of events per fraud episode, from the size ranges used in _episode().
_EPISODE_SIZE = {"card_testing": 6.5 + 0.6, "foreign_high": 2.0, "app_takeover": 2.0}
_PATTERNS_BEFORE = {"card_testing": 0.5, "foreign_high": 0.5}
_PATTERNS_AFTER = {"app_takeover": 0.7, "card_testing": 0.15, "foreign_high": 0.15}
# After drift_at legit behaviour shifts too (data drift): prices rise and more people pay via the app.
_LEGIT_AMOUNT_DRIFT = 1.5
_LEGIT_APP_SHIFT = 0.3
_DAY_AMPLITUDE = 0.6  # traffic peaks mid-afternoon and is 40% of the mean at 3 a.m.


@dataclass
class GeneratorConfig:
    """What to generate; the same config always yields the same stream."""

    seed: int = 42
    users: int = 1000
    events: int = 10000
    start: str = "2026-01-01T00:00:00Z"
    rate_per_s: float = 0.5  # mean events per second of event time, averaged over a day
    fraud_rate: float = 0.02  # share of events that are fraudulent
    label_delay_mean_s: float = 7200.0  # compressed from real chargeback delays so demos see labels
    label_delay_max_s: float = MAX_LABEL_DELAY_S
    label_missing_rate: float = 0.02
    drift_at: int | None = None  # event index from which the new fraud pattern starts
    drift_kind: str = "new_pattern"

    def __post_init__(self) -> None:
        if self.users < 1 or self.events < 0:
            raise ValueError("users must be >= 1 and events >= 0")
        if self.rate_per_s <= 0 or not 0 <= self.fraud_rate < 1 or not 0 <= self.label_missing_rate <= 1:
            raise ValueError("rate_per_s must be > 0, fraud_rate in [0, 1), label_missing_rate in [0, 1]")
        if not 1 <= self.label_delay_max_s <= MAX_LABEL_DELAY_S or self.label_delay_mean_s <= 0:
            raise ValueError(f"label_delay_max_s must be in [1, {MAX_LABEL_DELAY_S}], label_delay_mean_s > 0")
        if self.drift_kind != "new_pattern":
            raise ValueError("drift_kind must be 'new_pattern'")
        _parse_ms(self.start)


@dataclass(slots=True)
class _User:
    user_id: str
    home: str
    channel: str
    mu: float  # log of the user's median spend
    sigma: float
    cat_cum: list[float]


def _parse_ms(ts: str) -> int:
    """RFC3339 string to epoch milliseconds."""
    dt = datetime.fromisoformat(ts)
    if dt.tzinfo is None:
        raise ValueError(f"timestamp '{ts}' needs a timezone")
    return round(dt.timestamp() * 1000)


def _iso(ms: int) -> str:
    """Epoch milliseconds to '2026-01-01T00:00:00.000Z'."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


def _make_users(rng: random.Random, n: int) -> tuple[list[_User], list[float]]:
    """The user population and cumulative activity weights."""
    width = max(5, len(str(n - 1)))
    users = []
    for i in range(n):
        prefs = [p * rng.gammavariate(0.8, 1.0) for p in _CAT_POPULARITY]
        users.append(_User(
            user_id=f"u{i:0{width}d}",
            home=rng.choices(COUNTRIES, _HOME_WEIGHTS)[0],
            channel=rng.choices(CHANNELS, (0.55, 0.2, 0.25))[0],
            mu=rng.gauss(3.2, 0.5),  # median spend ~25 EUR, varying ×/÷1.6 between users
            sigma=rng.uniform(0.5, 1.0),
            cat_cum=list(accumulate(prefs)),
        ))
    # Zipf-like activity over a random ranking: a few users transact far more often than most.
    ranks = list(range(1, n + 1))
    rng.shuffle(ranks)
    return users, list(accumulate(r ** -0.5 for r in ranks))


def _foreign(rng: random.Random, home: str, weights: tuple[float, ...]) -> str:
    while (c := rng.choices(COUNTRIES, weights)[0]) == home:
        pass
    return c


def _legit(rng: random.Random, u: _User, drifted: bool) -> tuple:
    """One ordinary purchase: (category, amount, country, channel)."""
    cat = bisect.bisect_right(u.cat_cum, rng.random() * u.cat_cum[-1])
    amount = rng.lognormvariate(u.mu, u.sigma) * _CAT_SCALE[cat] * (_LEGIT_AMOUNT_DRIFT if drifted else 1.0)
    # Legit users travel too, so a foreign country alone is not proof of fraud.
    country = u.home if rng.random() >= 0.03 else _foreign(rng, u.home, _HOME_WEIGHTS)
    channel = u.channel if rng.random() < 0.75 else rng.choice(CHANNELS)
    if drifted and rng.random() < _LEGIT_APP_SHIFT:
        channel = "app"
    return CATEGORIES[cat], amount, country, channel


def _episode(rng: random.Random, u: _User, pattern: str) -> list[tuple]:
    """A fraud episode on one card: [(offset_s, category, amount, country, channel)]."""
    out, off, typical = [], 0.0, math.exp(u.mu)
    if pattern == "card_testing":
        # Stolen card numbers are probed with tiny online purchases minutes apart, then cashed out.
        country = u.home if rng.random() < 0.6 else _foreign(rng, u.home, _FRAUD_ORIGIN_WEIGHTS)
        for _ in range(rng.randint(4, 9)):
            cat = rng.choices(("gift_cards", "gaming", "electronics", "fashion", "restaurants"), (3, 3, 2, 1, 1))[0]
            out.append((off, cat, rng.uniform(0.5, 15.0), country, "web" if rng.random() < 0.7 else "app"))
            off += rng.expovariate(1 / 45)
        if rng.random() < 0.6:
            off += rng.uniform(60, 600)
            out.append((off, rng.choice(("electronics", "gift_cards")), typical * rng.uniform(5, 40), country, "web"))
    elif pattern == "foreign_high":
        # A cloned card used abroad for a few large purchases.
        country = _foreign(rng, u.home, _FRAUD_ORIGIN_WEIGHTS)
        for _ in range(rng.randint(1, 3)):
            cat = rng.choices(("electronics", "travel", "fashion", "gift_cards"), (4, 2, 2, 2))[0]
            amount = typical * rng.uniform(4, 20)
            out.append((off, cat, amount, country, rng.choice(("pos", "web"))))
            off += rng.uniform(120, 1200)
    else:  # app_takeover, the post-drift pattern
        # A taken-over app account: home country, app channel, moderate travel/fashion buys, no burst.
        for _ in range(rng.randint(1, 3)):
            cat = rng.choice(("travel", "fashion"))
            out.append((off, cat, typical * rng.uniform(3, 10), u.home, "app"))
            off += rng.uniform(300, 2400)
    return out


def _regime(cfg: GeneratorConfig, drifted: bool) -> tuple[float, float, list[str], list[float]]:
    """Episode start probability per arrival, arrival rate, and pattern mix for one regime."""
    mix = _PATTERNS_AFTER if drifted else _PATTERNS_BEFORE
    size = sum(w * _EPISODE_SIZE[p] for p, w in mix.items())
    # An episode emits `size` events, so pick p such that the share of fraud *events* is fraud_rate.
    p = cfg.fraud_rate / (size * (1 - cfg.fraud_rate) + cfg.fraud_rate)
    return p, cfg.rate_per_s / ((1 - p) + p * size), list(mix), list(mix.values())


def _next_arrival(rng: random.Random, t: float, rate: float) -> float:
    """Next arrival after t (epoch seconds) of a Poisson process with a daily cycle, by thinning."""
    peak = 1 + _DAY_AMPLITUDE
    while True:
        t += rng.expovariate(rate * peak)
        hour = (t / 3600) % 24
        if rng.random() * peak < 1 + _DAY_AMPLITUDE * math.cos(2 * math.pi * (hour - 15) / 24):
            return t


def generate(config: GeneratorConfig) -> Iterator[tuple[dict, dict | None]]:
    """Yield (event, label or None) in event-time order."""
    cfg = config
    # Separate streams so e.g. changing label settings does not change the events.
    rng = random.Random(cfg.seed)
    lrng = random.Random(f"{cfg.seed}:labels")
    users, activity = _make_users(random.Random(f"{cfg.seed}:users"), cfg.users)
    total = activity[-1]
    delay_sigma = 1.0
    delay_mu = math.log(cfg.label_delay_mean_s) - delay_sigma ** 2 / 2  # lognormal with the configured mean
    heap: list[tuple] = []  # (ts_ms, seq, user, fields, is_fraud): events scheduled but not yet emitted
    seq = itertools.count()
    t = _parse_ms(cfg.start) / 1000
    regimes = (_regime(cfg, False), _regime(cfg, True))
    index = 0
    while index < cfg.events:
        drifted = cfg.drift_at is not None and index >= cfg.drift_at
        p, rate, patterns, weights = regimes[drifted]
        t = _next_arrival(rng, t, rate)
        while heap and heap[0][0] <= t * 1000 and index < cfg.events:
            ts_ms, _, u, (cat, amount, country, channel), fraud = heapq.heappop(heap)
            event_id = f"fraud-{cfg.seed}-{index}"
            event = {"event_id": event_id, "user_id": u.user_id,
                     "amount": min(MAX_AMOUNT, max(0.01, round(amount, 2))), "merchant_category": cat,
                     "country": country, "channel": channel, "ts": _iso(ts_ms)}
            label = None
            if lrng.random() >= cfg.label_missing_rate:
                delay = min(max(1.0, lrng.lognormvariate(delay_mu, delay_sigma)), cfg.label_delay_max_s)
                label = {"event_id": event_id, "value": fraud, "observed_at": _iso(ts_ms + int(delay * 1000))}
            yield event, label
            index += 1
        if rng.random() < p:
            u = users[rng.randrange(len(users))]  # any card can be compromised, active or not
            for off, *fields in _episode(rng, u, rng.choices(patterns, weights)[0]):
                heapq.heappush(heap, (int((t + off) * 1000), next(seq), u, fields, True))
        else:
            u = users[bisect.bisect_right(activity, rng.random() * total)]
            heapq.heappush(heap, (int(t * 1000), next(seq), u, _legit(rng, u, drifted), False))


def interleave(stream: Iterable[tuple[dict, dict | None]]) -> Iterator[tuple[str, dict]]:
    """Yield ('event', body) / ('label', body) in real-time order: each label at its observed_at."""
    pending: list[tuple[int, int, dict]] = []
    seq = itertools.count()
    for event, label in stream:
        ts = _parse_ms(event["ts"])
        while pending and pending[0][0] <= ts:
            yield "label", heapq.heappop(pending)[2]
        yield "event", event
        if label is not None:
            heapq.heappush(pending, (_parse_ms(label["observed_at"]), next(seq), label))
    while pending:
        yield "label", heapq.heappop(pending)[2]


# ---------------------------------------------------------------- CLI

class HttpSink:
    """Posts events and labels to ingest in batches; retries 503 after Retry-After with the same ids.
    Progress and rejections go to `log` (stderr by default)."""

    RETRY_BUDGET_S = 300.0

    def __init__(self, url: str, batch: int, total_events: int,
                 log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr)):
        self.log = log
        self.client = httpx.Client(base_url=url.rstrip("/"), timeout=30.0,
                                   limits=httpx.Limits(max_connections=4, max_keepalive_connections=4))
        self.batch, self.total = batch, total_events
        self.buffers: dict[str, list[dict]] = {"event": [], "label": []}
        self.sent = {"event": 0, "label": 0}
        self.rejected = self.failed_batches = 0
        self.started = self.last_progress = time.monotonic()

    def add(self, kind: str, body: dict) -> None:
        # One buffer per kind: labels are interleaved with events every few records, so flushing on each
        # switch of kind would send batches of ~2. Events are flushed before labels, so a label still never
        # reaches ingest before its event; labels are late by at most one batch.
        self.buffers[kind].append(body)
        if len(self.buffers[kind]) >= self.batch:
            if kind == "label":
                self._flush_kind("event")
            self._flush_kind(kind)

    def flush(self) -> None:
        self._flush_kind("event")
        self._flush_kind("label")

    def _flush_kind(self, kind: str) -> None:
        if self.buffers[kind]:
            self._post(kind, self.buffers[kind])
            self.buffers[kind] = []
        now = time.monotonic()
        if now - self.last_progress >= 2.0:
            self.last_progress = now
            self.log(f"sent {self.sent['event']}/{self.total} events, {self.sent['label']} labels, "
                     f"{self.sent['event'] / (now - self.started):.0f} ev/s")

    def _post(self, kind: str, items: list[dict]) -> None:
        payload = json.dumps(items, separators=(",", ":")).encode()
        deadline, attempt = time.monotonic() + self.RETRY_BUDGET_S, 0
        while True:
            attempt += 1
            try:
                r = self.client.post(f"/v1/{kind}s", content=payload, headers={"Content-Type": "application/json"})
            except httpx.TransportError as exc:
                wait, why = min(2.0 ** attempt, 30.0), f"{type(exc).__name__}: {exc}"
            else:
                if r.status_code in (202, 207, 422):
                    return self._result(kind, items, r)
                if r.status_code != 503:
                    self.log(f"{kind} batch failed: HTTP {r.status_code} {r.text[:300]}")
                    self.failed_batches += 1
                    return
                wait, why = _retry_after(r), "HTTP 503"
            if time.monotonic() + wait > deadline:
                self.log(f"{kind} batch failed after {attempt} attempts: {why}")
                self.failed_batches += 1
                return
            self.log(f"{why}; retrying the same {kind} batch in {wait:g}s")
            time.sleep(wait)

    def _result(self, kind: str, items: list[dict], r: httpx.Response) -> None:
        body = r.json()
        self.sent[kind] += body.get("accepted", 0)
        rejected = body.get("rejected", [])
        self.rejected += len(rejected)
        if r.status_code == 422:
            self.failed_batches += 1
        for rej in rejected[:10]:
            eid = items[rej["index"]].get("event_id") if 0 <= rej["index"] < len(items) else None
            self.log(f"rejected {kind} {eid}: {rej['field']} {rej['code']}: {rej['reason']}")
        if len(rejected) > 10:
            self.log(f"... and {len(rejected) - 10} more rejections in this batch")

    def close(self) -> int:
        self.flush()
        self.client.close()
        took = time.monotonic() - self.started
        self.log(f"done: {self.sent['event']}/{self.total} events and {self.sent['label']} labels accepted in "
                 f"{took:.1f}s ({self.sent['event'] / max(took, 1e-9):.0f} ev/s); {self.rejected} rejected, "
                 f"{self.failed_batches} failed batches")
        return 1 if self.failed_batches or self.rejected else 0


def _retry_after(r: httpx.Response) -> float:
    try:
        return min(60.0, max(0.1, float(r.headers.get("Retry-After", "1"))))
    except ValueError:  # an HTTP-date; not worth parsing for a local service
        return 1.0


def main(argv: list[str] | None = None) -> int:
    """Generate a stream and write it as NDJSON or post it to the ingest service."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--events", type=int, default=10000)
    ap.add_argument("--drift-at", type=int, default=None, help="event index where the new fraud pattern starts")
    ap.add_argument("--fraud-rate", type=float, default=0.02)
    dest = ap.add_mutually_exclusive_group(required=True)
    dest.add_argument("--out", help="NDJSON file of {kind, body} lines; '-' for stdout")
    dest.add_argument("--ingest-url", help="ingest base URL, e.g. http://127.0.0.1:8001")
    ap.add_argument("--batch", type=int, default=500, help="records per POST")
    ap.add_argument("--rate", type=float, default=None, help="throttle to this many events per wall-clock second")
    args = ap.parse_args(argv)
    cfg = GeneratorConfig(seed=args.seed, users=args.users, events=args.events,
                          drift_at=args.drift_at, fraud_rate=args.fraud_rate)
    stream = interleave(generate(cfg))
    t0, queued = time.monotonic(), 0
    if args.out:
        out = sys.stdout if args.out == "-" else open(args.out, "w")
        try:
            for kind, body in stream:
                if args.rate and kind == "event":
                    queued += 1
                    if (delay := t0 + queued / args.rate - time.monotonic()) > 0:
                        out.flush()
                        time.sleep(delay)
                out.write(json.dumps({"kind": kind, "body": body}, separators=(",", ":")) + "\n")
        except BrokenPipeError:  # the reader went away (e.g. `| head`); silence the flush at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        finally:
            if out is not sys.stdout:
                out.close()
        return 0
    sink = HttpSink(args.ingest_url, max(1, args.batch), cfg.events)
    try:
        for kind, body in stream:
            if args.rate and kind == "event":
                queued += 1
                # Only sleep in chunks of >= 50 ms, and send what is queued before sleeping.
                if (delay := t0 + queued / args.rate - time.monotonic()) > 0.05:
                    sink.flush()
                    time.sleep(delay)
            sink.add(kind, body)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sink.close()
        return 130
    return sink.close()


if __name__ == "__main__":
    sys.exit(main())
