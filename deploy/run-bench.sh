#!/usr/bin/env bash
# Every benchmark module under bench/ against a throwaway real Kafka; each prints its figures.
# A failing benchmark does not stop the others; the exit status says whether any failed.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/with-kafka.sh bash -c '
  rc=0
  for m in bench.busy_window bench.features bench.ingest bench.modeling bench.scoring bench.trainer bench.freshness bench.monitor bench.sea_loop; do
    echo "== $m"
    .venv/bin/python -m "$m" || rc=1
  done
  exit $rc'
