"""The SEA concept-drift stream through the five services (examples/sea/loop.py): accuracy of the served
predictions before the drift, right after it and once adapted, next to river's in-process prequential
accuracy on the same stream and label delay.

    deploy/with-kafka.sh .venv/bin/python -m bench.sea_loop [--events 10000 --drift-at 5000 ...]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from bench.common import fast_httpx_without_sniffio, machine, require_kafka, sigterm_as_exit, unique_prefix
from examples.sea.generate import SeaConfig
from examples.sea.loop import LoopConfig, run


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.sea_loop", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=10_000)
    ap.add_argument("--drift-at", type=int, default=5_000)
    ap.add_argument("--drift-width", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=500, help="events sent to ingest as history, not scored")
    ap.add_argument("--adapt", type=int, default=1_000, help="events after the drift counted as 'right after'")
    ap.add_argument("--label-delay", type=float, default=10.0, help="seconds of event time (10 events a second)")
    ap.add_argument("--rate", type=float, default=None, help="scored events per wall-clock second (default: unpaced)")
    ap.add_argument("--publish-every", type=int, default=100, help="TRAINER_PUBLISH_EVERY_EXAMPLES")
    ap.add_argument("--seed", type=int, default=7)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    kafka = require_kafka("bench.sea_loop")
    sigterm_as_exit()
    fast_httpx_without_sniffio()
    cfg = LoopConfig(SeaConfig(seed=args.seed, events=args.events, drift_at=args.drift_at,
                               drift_width=args.drift_width, label_delay_s=args.label_delay),
                     warmup=args.warmup, adapt=args.adapt, rate=args.rate, publish_every=args.publish_every)
    work = Path(tempfile.mkdtemp(prefix="loopline-sea."))
    print(f"sea loop bench: {machine()}, load average {os.getloadavg()[0]:.2f}, "
          f"broker {kafka.bootstrap_servers}, work dir {work}", flush=True)
    result = run(kafka.bootstrap_servers, work, cfg, prefix=unique_prefix("sea"),
                 say=lambda msg: print(f"  {msg}", flush=True))
    print(f"\nload average now {' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    print(result.report())
    print("\naccuracy per 500 scored events (served / river):")
    print("  " + "  ".join(f"{lo}: {s:.3f}/{r:.3f}" for lo, s, r in result.curve(500)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
