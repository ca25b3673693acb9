#!/usr/bin/env bash
# The whole suite (unit + integration + end-to-end) against a throwaway real Kafka.
# pytest's exit 5 (no tests collected) is a failure here, not a pass.
set -uo pipefail
cd "$(dirname "$0")/.."
# promtool for tests/unit/test_prometheus_rules.py (which fails in CI without it, and says why)
deploy/ensure-promtool.sh || echo "run-tests: promtool could not be installed" >&2
deploy/with-kafka.sh env LOOPLINE_TEST_KAFKA=external .venv/bin/python -m pytest -ra -p no:cacheprovider "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "run-tests: pytest collected no tests; failing" >&2
  exit 1
fi
exit "$rc"
