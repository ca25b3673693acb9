#!/usr/bin/env bash
# Run a command against a throwaway single-node Kafka on free loopback ports; the broker and
# its data are removed afterwards, whatever the command's outcome.
#   deploy/with-kafka.sh CMD [ARGS...]     (CMD sees KAFKA_BOOTSTRAP_SERVERS)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
read -r KAFKA_PORT KAFKA_CONTROLLER_PORT < <(python3 "$here/free_ports.py" 2)
KAFKA_DATA_DIR="$(mktemp -d /tmp/loopline-kafka.XXXXXX)"
export KAFKA_PORT KAFKA_CONTROLLER_PORT KAFKA_DATA_DIR
cleanup() { "$here/kafka/kafka.sh" stop || true; rm -rf "$KAFKA_DATA_DIR"; }
trap cleanup EXIT
"$here/kafka/kafka.sh" start
export KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:$KAFKA_PORT"
"$@"
