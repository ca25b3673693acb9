#!/usr/bin/env python
"""A seeded SEA stream with a concept drift, event times and delayed labels, for
examples/sea/pipeline.yaml (library and CLI).

The points come from river's `synth.ConceptDriftStream` over two `synth.SEA` variants: before
`drift_at` the label is x1 + x2 > θ of `variant_before`, after it that of `variant_after`, the new
concept taking over along a sigmoid `drift_width` events wide (river's `position` and `width`).
Event i happens `i / rate_per_s` seconds after `start`; its label is observed `label_delay_s` (plus
a uniform jitter up to `label_jitter_s`) later, and carries that time as `observed_at`, which is
what decides whether a label is late (README, Ingest).

    python examples/sea/generate.py --events 4000 --out sea.ndjson    (then: loopline replay sea.ndjson)
"""
from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from river.datasets import synth

# SEA's thresholds per variant (river.datasets.synth.SEA): the label is x1 + x2 > θ.
THRESHOLDS = {0: 8.0, 1: 9.0, 2: 7.0, 3: 9.5}


@dataclass(frozen=True)
class SeaConfig:
    """What to generate; the same config gives the same stream."""

    seed: int = 7
    events: int = 4000
    drift_at: int = 2000  # the event index where the new concept has half the weight
    drift_width: int = 50
    variant_before: int = 2  # θ = 7
    variant_after: int = 3  # θ = 9.5: the 21 % of points with 7 < x1 + x2 <= 9.5 change their label
    noise: float = 0.0  # share of labels flipped (river's SEA `noise`)
    rate_per_s: float = 10.0  # events per second of event time
    label_delay_s: float = 10.0
    label_jitter_s: float = 0.0
    start: datetime | None = None  # None: so that the last label is observed a minute ago

    def __post_init__(self) -> None:
        if self.variant_before not in THRESHOLDS or self.variant_after not in THRESHOLDS:
            raise ValueError(f"SEA variants are {sorted(THRESHOLDS)}")
        if self.events < 1 or self.rate_per_s <= 0 or self.label_delay_s < 0 or self.label_jitter_s < 0:
            raise ValueError("events >= 1, rate_per_s > 0, label delays >= 0")
        if self.drift_width < 1 or self.drift_at / self.drift_width > 150:
            # river computes exp(4 * drift_at / drift_width) for the first event: overflows past ~177
            raise ValueError("drift_width must be >= 1 and >= drift_at / 150")

    def first_time(self) -> datetime:
        if self.start is not None:
            return self.start
        span = (self.events - 1) / self.rate_per_s + self.label_delay_s + self.label_jitter_s
        return datetime.now(UTC) - timedelta(seconds=span + 60)


def _iso(t: datetime) -> str:
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def generate(cfg: SeaConfig) -> Iterator[tuple[dict, dict]]:
    """Yield (event, label) in event-time order."""
    points = synth.ConceptDriftStream(
        stream=synth.SEA(variant=cfg.variant_before, noise=cfg.noise, seed=cfg.seed),
        drift_stream=synth.SEA(variant=cfg.variant_after, noise=cfg.noise, seed=cfg.seed + 1),
        position=cfg.drift_at, width=cfg.drift_width, seed=cfg.seed)
    delays = random.Random(f"{cfg.seed}:label-delay")
    start = cfg.first_time()
    for i, (x, y) in enumerate(itertools.islice(points, cfg.events)):
        t = start + timedelta(seconds=i / cfg.rate_per_s)
        event_id = f"sea-{cfg.seed}-{i}"
        delay = cfg.label_delay_s + delays.uniform(0, cfg.label_jitter_s)
        yield ({"event_id": event_id, "x1": x[0], "x2": x[1], "x3": x[2], "ts": _iso(t)},
               {"event_id": event_id, "value": bool(y), "observed_at": _iso(t + timedelta(seconds=delay))})


def main(argv: list[str] | None = None) -> int:
    """Write the stream as NDJSON {kind, body} lines in the order a live system sees them."""
    from examples.fraud.generate import interleave

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--events", type=int, default=4000)
    ap.add_argument("--drift-at", type=int, default=2000)
    ap.add_argument("--drift-width", type=int, default=50)
    ap.add_argument("--label-delay", type=float, default=10.0, help="seconds of event time")
    ap.add_argument("--out", default="-", help="NDJSON file; '-' for stdout")
    args = ap.parse_args(argv)
    cfg = SeaConfig(seed=args.seed, events=args.events, drift_at=args.drift_at, drift_width=args.drift_width,
                    label_delay_s=args.label_delay)
    out = sys.stdout if args.out == "-" else open(args.out, "w")
    try:
        for kind, body in interleave(generate(cfg)):
            out.write(json.dumps({"kind": kind, "body": body}, separators=(",", ":")) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
