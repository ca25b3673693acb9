#!/usr/bin/env bash
# Every benchmark under bench/ against a throwaway real Kafka; each prints its figures.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/with-kafka.sh bash -c 'for b in bench/*.py; do echo "== $b"; .venv/bin/python "$b"; done'
