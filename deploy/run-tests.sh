#!/usr/bin/env bash
# The whole suite (unit + integration + end-to-end) against a throwaway real Kafka.
# pytest's exit 5 (no tests collected) is a failure here, not a pass.
set -uo pipefail
cd "$(dirname "$0")/.."
# promtool for tests/unit/test_prometheus_rules.py (which fails in CI without it, and says why)
deploy/ensure-promtool.sh || echo "run-tests: promtool could not be installed" >&2
# The exploration report is tested in a real headless browser: Debian's chromium, installed here once.
# Without it that test fails (it never skips).
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "run-tests: installing chromium (apt-get)" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null ||
      echo "run-tests: could not install chromium; the browser test will fail" >&2
  else
    echo "run-tests: chromium is missing and cannot be installed here (needs root and apt-get)" >&2
  fi
fi
deploy/with-kafka.sh env LOOPLINE_TEST_KAFKA=external .venv/bin/python -m pytest -ra -p no:cacheprovider "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "run-tests: pytest collected no tests; failing" >&2
  exit 1
fi
exit "$rc"
