#!/usr/bin/env bash
# Run a command against a throwaway single-node Kafka on free loopback ports; the broker and
# its data are removed afterwards, whatever the command's outcome.
#   deploy/with-kafka.sh CMD [ARGS...]     (CMD sees KAFKA_BOOTSTRAP_SERVERS)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# Two distinct free ports below the ephemeral range (32768+ on Linux), so that no client's outgoing
# connection can take one between this choice and the broker's bind.
read -r KAFKA_PORT KAFKA_CONTROLLER_PORT < <(python3 - <<'PY'
import random, socket
ports = set()
while len(ports) < 2:
    p = random.randint(20000, 32000)
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", p))
        except OSError:
            continue
    ports.add(p)
print(*ports)
PY
)
KAFKA_DATA_DIR="$(mktemp -d /tmp/loopline-kafka.XXXXXX)"
export KAFKA_PORT KAFKA_CONTROLLER_PORT KAFKA_DATA_DIR
cleanup() { "$here/kafka/kafka.sh" stop || true; rm -rf "$KAFKA_DATA_DIR"; }
trap cleanup EXIT
"$here/kafka/kafka.sh" start
export KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:$KAFKA_PORT"
"$@"
