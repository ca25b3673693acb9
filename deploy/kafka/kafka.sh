#!/usr/bin/env bash
# Single-node Apache Kafka (KRaft, broker+controller) on loopback, assembled from the
# official jars on Maven Central and run with the machine's JDK. No Docker.
#
#   deploy/kafka/kafka.sh fetch     resolve the jars into deploy/kafka/.dist (cached)
#   deploy/kafka/kafka.sh start     format storage if needed, start, wait until ready (no-op if running)
#   deploy/kafka/kafka.sh stop      stop cleanly (SIGTERM, then SIGKILL after a grace period)
#   deploy/kafka/kafka.sh status    exit 0 if the broker answers, 1 otherwise
#   deploy/kafka/kafka.sh reset     stop and delete the data directory
#
# Environment: KAFKA_PORT (9092), KAFKA_CONTROLLER_PORT (9093), KAFKA_DATA_DIR
# (deploy/kafka/.data), KAFKA_HEAP_OPTS (-Xms256m -Xmx1g), KAFKA_START_TIMEOUT (90 s).
# A secured broker (all three unset: the PLAINTEXT broker above):
#   KAFKA_LISTENER_PROTOCOL  security protocol of the client listener on KAFKA_PORT, which is also
#                            the inter-broker listener (PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL);
#                            the controller listener is PLAINTEXT on loopback unless the extra
#                            config maps it to another protocol (listener.security.protocol.map)
#   KAFKA_EXTRA_CONFIG       a properties file appended to the generated server.properties (a key
#                            given again there overrides the generated one): TLS material, SASL
#                            mechanisms and JAAS, authorizer, ...
#   KAFKA_FORMAT_ARGS        more arguments for the first storage format, split on blanks, e.g.
#                            --add-scram SCRAM-SHA-512=[name=admin,password=...] (KRaft keeps SCRAM
#                            credentials in its metadata log: the broker's own must exist before start)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
version="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$here/pom.xml")"
dist="$here/.dist/kafka-$version"
port="${KAFKA_PORT:-9092}"
cport="${KAFKA_CONTROLLER_PORT:-9093}"
data="${KAFKA_DATA_DIR:-$here/.data}"
pidfile="$data/kafka.pid"
logfile="$data/server.log"
heap="${KAFKA_HEAP_OPTS:--Xms256m -Xmx1g}"
timeout="${KAFKA_START_TIMEOUT:-90}"
proto="${KAFKA_LISTENER_PROTOCOL:-PLAINTEXT}"
extra_config="${KAFKA_EXTRA_CONFIG:-}"
read -r -a format_args <<<"${KAFKA_FORMAT_ARGS:-}"  # read, not an unquoted $VAR: no glob expansion of [..]

log() { echo "[kafka] $*" >&2; }

fetch() {
  if [ -f "$dist/.complete" ]; then return 0; fi
  command -v mvn >/dev/null || { log "Maven (mvn) is required to fetch Kafka"; exit 1; }
  log "resolving Apache Kafka $version from Maven Central"
  rm -rf "$dist"
  mkdir -p "$dist/libs"
  mvn -q -B -Dstyle.color=never -f "$here/pom.xml" dependency:copy-dependencies \
    -DoutputDirectory="$dist/libs" -DincludeScope=runtime >&2
  touch "$dist/.complete"
}

running_pid() {
  # The pid file may be stale (killed run, rebooted machine, pid reused): trust it only
  # when that pid is a live Kafka JVM started from this data directory.
  [ -f "$pidfile" ] || return 1
  local pid
  pid="$(cat "$pidfile")"
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null &&
     tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "kafka.Kafka $data/server.properties"; then
    echo "$pid"
    return 0
  fi
  rm -f "$pidfile"
  return 1
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

write_config() {
  mkdir -p "$data/logs"
  cat >"$data/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=$proto://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=$proto://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=$proto
listener.security.protocol.map=$proto:$proto,CONTROLLER:PLAINTEXT
log.dirs=$data/logs
num.partitions=3
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Topics come from Loopline's topic catalogue; a typo must fail, not create a topic.
auto.create.topics.enable=false
group.initial.rebalance.delay.ms=0
log.retention.hours=168
EOF
  if [ -n "$extra_config" ]; then
    { echo "# from $extra_config (KAFKA_EXTRA_CONFIG): overrides the above"; cat "$extra_config"; } \
      >>"$data/server.properties"
  fi
  cat >"$data/log4j2.properties" <<EOF
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = $logfile
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.apache.name = org.apache.kafka
logger.apache.level = WARN
EOF
}

# shellcheck disable=SC2206  # heap holds several JVM flags
java_argv=("${JAVA_HOME:+$JAVA_HOME/bin/}java" $heap -XX:+UseG1GC -Djava.awt.headless=true
  -Dlog4j2.configurationFile="$data/log4j2.properties" -cp "$dist/libs/*")
run_java() { "${java_argv[@]}" "$@"; }

start() {
  if pid="$(running_pid)"; then
    log "already running (pid $pid) on 127.0.0.1:$port"
    return 0
  fi
  if port_open "$port"; then
    log "port $port is taken by another process; set KAFKA_PORT"
    exit 1
  fi
  fetch
  write_config
  # A fresh log per run, so the readiness check below cannot match an old "started".
  if [ -f "$logfile" ]; then mv "$logfile" "$logfile.1"; fi
  if [ ! -f "$data/logs/meta.properties" ]; then
    log "formatting storage in $data"
    local cluster_id
    cluster_id="$(run_java kafka.tools.StorageTool random-uuid)"
    run_java kafka.tools.StorageTool format -t "$cluster_id" \
      -c "$data/server.properties" --ignore-formatted ${format_args[@]+"${format_args[@]}"} >>"$logfile" 2>&1
  fi
  # A run that was killed leaves its lock file and maybe a half-written segment; Kafka
  # recovers both on start, so the data directory is reused as is.
  : >"$data/stdout.log"
  nohup "${java_argv[@]}" kafka.Kafka "$data/server.properties" >>"$data/stdout.log" 2>&1 &
  local pid=$!
  echo "$pid" >"$pidfile"
  log "starting Apache Kafka $version (pid $pid) on 127.0.0.1:$port, data in $data"
  local waited=0
  until port_open "$port" && grep -q "Kafka Server started" "$logfile" 2>/dev/null; do
    # Not running_pid: until the forked shell has exec'd java, its command line is not Kafka's
    # yet (that check failed intermittently here, and removed the pid file of a live broker).
    if ! kill -0 "$pid" 2>/dev/null; then
      log "broker exited during start; last lines of $data/stdout.log and $logfile:"
      tail -n 20 "$data/stdout.log" "$logfile" >&2 || true
      exit 1
    fi
    if [ "$waited" -ge "$((timeout * 5))" ]; then
      log "broker not ready after ${timeout}s; stopping it"
      kill "$pid" 2>/dev/null || true
      tail -n 20 "$logfile" >&2 || true
      exit 1
    fi
    sleep 0.2
    waited=$((waited + 1))
  done
  log "ready on 127.0.0.1:$port"
}

stop() {
  local pid
  if ! pid="$(running_pid)"; then
    log "not running"
    return 0
  fi
  kill -TERM "$pid"
  for _ in $(seq 1 150); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; log "stopped"; return 0; }
    sleep 0.2
  done
  log "no clean stop after 30s; killing"
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$pidfile"
}

case "${1:-}" in
  fetch) fetch ;;
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  status) running_pid >/dev/null && port_open "$port" ;;
  reset) stop; rm -rf "$data"; log "deleted $data" ;;
  *) echo "usage: $0 {fetch|start|stop|restart|status|reset}" >&2; exit 2 ;;
esac
