#!/usr/bin/env bash
# promtool for tests/unit/test_prometheus_rules.py: nothing if it is on PATH, else Debian's prometheus
# package (apt-get, as root; only its files are needed: the package ships a service that this does
# not start). Run by `make test`, `make test-unit` and deploy/run-tests.sh.
set -euo pipefail
command -v promtool >/dev/null 2>&1 && exit 0
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "ensure-promtool: installing Debian's prometheus package for promtool ..." >&2
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -q --no-install-recommends prometheus >/dev/null 2>&1; then
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends prometheus >/dev/null
  fi
  command -v promtool >/dev/null 2>&1 && exit 0
fi
echo "ensure-promtool: promtool is missing: install the prometheus package (apt-get install prometheus)," \
     "or put the promtool of an official Prometheus release on PATH" >&2
exit 1
