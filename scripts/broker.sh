#!/usr/bin/env bash
# Local single-node Apache Kafka (KRaft mode) for CAR-T Watch, on 127.0.0.1 only.
#
#   scripts/broker.sh up        fetch jars if missing, format storage once, start, wait, create topics
#   scripts/broker.sh down      stop the broker this script started (SIGTERM, then SIGKILL)
#   scripts/broker.sh status    exit 0 running, 3 stopped, 1 unhealthy / port taken by another process
#   scripts/broker.sh topics    create the project's topics if missing, print their partition counts
#   scripts/broker.sh topics --describe | --list
#
# Environment (all optional):
#   CARWATCH_STATE_DIR              state dir (default <repo>/var/kafka): data/, logs/, pid, config
#   CARWATCH_KAFKA_PORT             client (PLAINTEXT) port, default 9092
#   CARWATCH_KAFKA_CONTROLLER_PORT  KRaft controller port, default 9093
#   CARWATCH_PARTITIONS             partitions of each project topic, default 8
#   CARWATCH_KAFKA_START_TIMEOUT    seconds `up` waits for the broker to answer, default 60
#   CARWATCH_KAFKA_STOP_TIMEOUT     seconds `down` waits after SIGTERM before SIGKILL, default 30
#   KAFKA_HEAP_OPTS                 broker heap, default "-Xms256m -Xmx512m"
#   Opt-in secure listener (TLS + SASL/SCRAM-SHA-256) next to the plaintext one, all four needed:
#   CARWATCH_KAFKA_SASL_SSL_PORT    its port on 127.0.0.1
#   CARWATCH_KAFKA_SSL_KEYSTORE_PEM PEM file with the broker's private key (PKCS#8, unencrypted)
#                                   and certificate chain
#   CARWATCH_KAFKA_SCRAM_USER       a SCRAM-SHA-256 user created when the storage is formatted
#   CARWATCH_KAFKA_SCRAM_PASSWORD   its password (give them before the first `up` of a state dir)
#   JAVA_HOME                       Java 17+ to use (else `java` on PATH)
#
# The jars come from Maven Central through deploy/kafka/pom.xml into deploy/kafka/lib (git-ignored);
# mvn runs only when that folder lacks the version the pom names.
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KAFKA_DIR="$REPO_DIR/deploy/kafka"
LIB_DIR="$KAFKA_DIR/lib"
HOST=127.0.0.1
PORT="${CARWATCH_KAFKA_PORT:-9092}"
CONTROLLER_PORT="${CARWATCH_KAFKA_CONTROLLER_PORT:-9093}"
PARTITIONS="${CARWATCH_PARTITIONS:-8}"
START_TIMEOUT="${CARWATCH_KAFKA_START_TIMEOUT:-60}"
STOP_TIMEOUT="${CARWATCH_KAFKA_STOP_TIMEOUT:-30}"
HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms256m -Xmx512m}"
TOPICS=(carwatch.labs carwatch.clinical carwatch.alerts carwatch.deadletter carwatch.inbound)
# The message store keeps raw messages up to the largest FHIR body (16 MiB with headers).
declare -A TOPIC_CONFIGS=([carwatch.inbound]="max.message.bytes=16777216")
SASL_SSL_PORT="${CARWATCH_KAFKA_SASL_SSL_PORT:-}"
KEYSTORE_PEM="${CARWATCH_KAFKA_SSL_KEYSTORE_PEM:-}"
SCRAM_USER="${CARWATCH_KAFKA_SCRAM_USER:-}"
SCRAM_PASSWORD="${CARWATCH_KAFKA_SCRAM_PASSWORD:-}"
BOOTSTRAP="$HOST:$PORT"

STATE_DIR="${CARWATCH_STATE_DIR:-$REPO_DIR/var/kafka}"
# Set by init_state once the state dir exists and its absolute path is known.
DATA_DIR="" LOG_DIR="" PID_FILE="" CONFIG_FILE="" CLUSTER_ID_FILE="" OUT_FILE=""

JAVA=""
# Short-lived tool JVMs: small heap, quick start.
TOOL_JVM_OPTS=(-Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true)
# Broker JVM flags as in Kafka's own kafka-server-start.sh / kafka-run-class.sh.
BROKER_JVM_OPTS=(-server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35
  -XX:+ExplicitGCInvokesConcurrent -XX:MaxInlineLevel=15 -XX:+ExitOnOutOfMemoryError
  -Djava.awt.headless=true)

die() {
  echo "broker.sh: $*" >&2
  exit 1
}

info() {
  echo "broker.sh: $*"
}

usage() {
  echo "usage: $0 {up|down|status|topics [--describe|--list]}" >&2
  exit 2
}

check_settings() {
  local name value
  for name in PORT CONTROLLER_PORT PARTITIONS START_TIMEOUT STOP_TIMEOUT; do
    value="${!name}"
    [[ $value =~ ^[1-9][0-9]*$ ]] || die "$name must be a positive integer, got '$value'"
  done
  ((PORT != CONTROLLER_PORT)) || die "CARWATCH_KAFKA_PORT and CARWATCH_KAFKA_CONTROLLER_PORT are both $PORT"
  if [[ -n $SASL_SSL_PORT ]]; then
    [[ $SASL_SSL_PORT =~ ^[1-9][0-9]*$ ]] || die "CARWATCH_KAFKA_SASL_SSL_PORT must be a port, got '$SASL_SSL_PORT'"
    [[ -f $KEYSTORE_PEM ]] || die "CARWATCH_KAFKA_SSL_KEYSTORE_PEM must name the broker's PEM key and certificate"
    [[ -n $SCRAM_USER && -n $SCRAM_PASSWORD ]] || die "the SASL_SSL listener needs CARWATCH_KAFKA_SCRAM_USER and _PASSWORD"
  fi
}

# The secure listener's lines (none unless CARWATCH_KAFKA_SASL_SSL_PORT is set).
secure_config() {
  [[ -n $SASL_SSL_PORT ]] || return 0
  printf '%s\n' \
    "listeners=PLAINTEXT://$HOST:$PORT,CONTROLLER://$HOST:$CONTROLLER_PORT,SASL_SSL://$HOST:$SASL_SSL_PORT" \
    "advertised.listeners=PLAINTEXT://$HOST:$PORT,SASL_SSL://$HOST:$SASL_SSL_PORT" \
    "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL" \
    "sasl.enabled.mechanisms=SCRAM-SHA-256" \
    "listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;" \
    "listener.name.sasl_ssl.ssl.keystore.type=PEM" \
    "listener.name.sasl_ssl.ssl.keystore.location=$KEYSTORE_PEM"
}

init_state() {
  mkdir -p "$STATE_DIR" || die "cannot create state dir $STATE_DIR"
  STATE_DIR="$(cd "$STATE_DIR" && pwd)"
  DATA_DIR="$STATE_DIR/data"
  LOG_DIR="$STATE_DIR/logs"
  PID_FILE="$STATE_DIR/broker.pid"
  CONFIG_FILE="$STATE_DIR/server.properties"
  CLUSTER_ID_FILE="$STATE_DIR/cluster.id"
  OUT_FILE="$LOG_DIR/broker.out"
  mkdir -p "$LOG_DIR"
}

# One `up`/`down` at a time per state dir (e.g. parallel test sessions). fd 9 is closed for the
# broker itself so the lock is released when this script exits.
take_lock() {
  if command -v flock >/dev/null 2>&1; then
    exec 9>"$STATE_DIR/.broker.lock"
    flock -w 180 9 || die "another broker.sh still holds $STATE_DIR/.broker.lock after 180 s"
  fi
}

kafka_version() {
  sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$KAFKA_DIR/pom.xml" | head -n 1
}

find_java() {
  if [[ -n ${JAVA_HOME:-} && -x $JAVA_HOME/bin/java ]]; then
    JAVA="$JAVA_HOME/bin/java"
  else
    JAVA="$(command -v java || true)"
  fi
  [[ -n $JAVA ]] || die "java not found: install Java 17+ or set JAVA_HOME"
  local version major
  version="$("$JAVA" -version 2>&1 | sed -n 's/.*version "\([^"]*\)".*/\1/p' | head -n 1)"
  major="${version%%.*}"
  [[ $major =~ ^[0-9]+$ && $major -ge 17 ]] || die "Kafka 4.x needs Java 17+, but $JAVA is '${version:-unknown}'"
}

# True when lib/ holds exactly the Kafka version the pom names.
lib_complete() {
  local version="$1" cores
  [[ -f $LIB_DIR/kafka_2.13-$version.jar && -f $LIB_DIR/kafka-tools-$version.jar ]] || return 1
  cores=("$LIB_DIR"/kafka_2.13-*.jar)
  ((${#cores[@]} == 1))
}

ensure_lib() {
  local version fetch log
  version="$(kafka_version)"
  [[ -n $version ]] || die "cannot read <kafka.version> from $KAFKA_DIR/pom.xml"
  lib_complete "$version" && return 0
  command -v mvn >/dev/null 2>&1 || die "$LIB_DIR lacks Kafka $version jars and mvn is not installed"
  fetch="$STATE_DIR/lib.fetch"
  log="$LOG_DIR/mvn-fetch.log"
  rm -rf "$fetch"
  info "fetching Kafka $version jars with Maven (log: $log) ..."
  if ! (cd "$KAFKA_DIR" && mvn -B -q dependency:copy-dependencies -DoutputDirectory="$fetch") >"$log" 2>&1; then
    rm -rf "$fetch"
    die "mvn could not fetch Kafka $version jars (see $log; Maven Central must be reachable once)"
  fi
  rm -rf "$LIB_DIR"
  mv "$fetch" "$LIB_DIR"
  lib_complete "$version" || die "mvn ran but $LIB_DIR still lacks kafka_2.13-$version.jar"
}

# Runs a Kafka tool class: kafka_tool SECONDS CLASS ARGS...
kafka_tool() {
  local seconds="$1"
  shift
  timeout "$seconds" "$JAVA" "${TOOL_JVM_OPTS[@]}" \
    -Dlog4j2.configurationFile="$KAFKA_DIR/tools-log4j2.properties" \
    -cp "$LIB_DIR/*" "$@" 9>&-
}

# The template plus the values this script owns; the last value of a key wins in Java properties.
render_config() {
  {
    cat "$KAFKA_DIR/server.properties"
    printf '\n# ---- appended by scripts/broker.sh (these override the values above) ----\n'
    printf '%s\n' \
      "listeners=PLAINTEXT://$HOST:$PORT,CONTROLLER://$HOST:$CONTROLLER_PORT" \
      "advertised.listeners=PLAINTEXT://$HOST:$PORT" \
      "controller.quorum.voters=1@$HOST:$CONTROLLER_PORT" \
      "log.dirs=$DATA_DIR"
    secure_config
  } >"$CONFIG_FILE.tmp"
  mv "$CONFIG_FILE.tmp" "$CONFIG_FILE"
}

format_storage() {
  [[ -f $DATA_DIR/meta.properties ]] && return 0
  local cluster_id log="$LOG_DIR/format.log"
  if [[ ! -s $CLUSTER_ID_FILE ]]; then
    cluster_id="$(kafka_tool 60 kafka.tools.StorageTool random-uuid 2>"$log")" ||
      die "kafka-storage random-uuid failed (see $log)"
    printf '%s\n' "$cluster_id" >"$CLUSTER_ID_FILE"
  fi
  cluster_id="$(head -n 1 "$CLUSTER_ID_FILE")"
  local scram=()
  if [[ -n $SASL_SSL_PORT ]]; then
    scram=(--add-scram "SCRAM-SHA-256=[name=$SCRAM_USER,password=$SCRAM_PASSWORD]")
  fi
  kafka_tool 60 kafka.tools.StorageTool format --config "$CONFIG_FILE" --cluster-id "$cluster_id" \
    --ignore-formatted "${scram[@]}" >"$log" 2>&1 || die "formatting storage in $DATA_DIR failed (see $log)"
  info "formatted storage in $DATA_DIR (cluster id $cluster_id)"
}

# A process that exists and is not a zombie.
alive() {
  local stat
  stat="$(ps -o stat= -p "$1" 2>/dev/null)" || return 1
  [[ -n $stat && $stat != Z* ]]
}

# Prints the pid of the broker this script started for this state dir, if it is running.
broker_pid() {
  [[ -f $PID_FILE ]] || return 1
  local pid args
  pid="$(head -n 1 "$PID_FILE")"
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  alive "$pid" || return 1
  args="$(ps -o args= -p "$pid" 2>/dev/null)" || return 1
  [[ $args == *kafka.Kafka* && $args == *"$CONFIG_FILE"* ]] || return 1
  echo "$pid"
}

port_open() {
  # shellcheck disable=SC2016  # $1/$2 expand in the child bash, not here
  timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$HOST" "$1" 2>/dev/null
}

# The broker answers a metadata + ApiVersions round trip and lists itself (node 1).
broker_answers() {
  local out
  out="$(kafka_tool 20 org.apache.kafka.tools.BrokerApiVersionsCommand \
    --bootstrap-server "$BOOTSTRAP" 2>/dev/null)" || return 1
  [[ $out == *"(id: 1 "* ]]
}

line_count() {
  if [[ -f $1 ]]; then wc -l <"$1"; else echo 0; fi
}

# Line counts of the broker's logs when this launch began, so failures show only its own lines.
SERVER_LOG_MARK=0 OUT_FILE_MARK=0

last_errors() {
  local f mark lines
  for f in "$LOG_DIR/server.log" "$OUT_FILE"; do
    [[ -f $f ]] || continue
    mark="$SERVER_LOG_MARK"
    [[ $f == "$OUT_FILE" ]] && mark="$OUT_FILE_MARK"
    ((mark <= $(line_count "$f"))) || mark=0 # the log rolled over
    lines="$(tail -n "+$((mark + 1))" "$f" | tail -n 15)"
    [[ -n $lines ]] || continue
    printf -- '--- last lines of %s:\n%s\n' "$f" "$lines" >&2
  done
}

wait_ready() {
  local pid="$1" deadline=$((SECONDS + START_TIMEOUT))
  while ((SECONDS < deadline)); do
    if ! alive "$pid"; then
      last_errors
      rm -f "$PID_FILE"
      die "broker (pid $pid) exited during startup; logs in $LOG_DIR"
    fi
    if port_open "$PORT" && broker_answers; then
      return 0
    fi
    sleep 0.5
  done
  return 1
}

stop_pid() {
  local pid="$1" deadline
  kill -TERM "$pid" 2>/dev/null || true
  deadline=$((SECONDS + STOP_TIMEOUT))
  while alive "$pid" && ((SECONDS < deadline)); do
    sleep 0.2
  done
  if alive "$pid"; then
    echo "broker.sh: pid $pid still running ${STOP_TIMEOUT}s after SIGTERM, sending SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
    deadline=$((SECONDS + 10))
    while alive "$pid" && ((SECONDS < deadline)); do
      sleep 0.2
    done
    ! alive "$pid" || die "pid $pid survived SIGKILL"
  fi
}

# Prints "topic partition_count" for each existing project topic.
describe_counts() {
  local pattern out
  pattern="$(printf '%s|' "${TOPICS[@]}")"
  pattern="${pattern%|}"
  out="$(kafka_tool 60 org.apache.kafka.tools.TopicCommand --bootstrap-server "$BOOTSTRAP" \
    --describe --topic "${pattern//./\\.}")" || return 1
  awk -F'\t' '/^Topic: / {
      t = ""; n = ""
      for (i = 1; i <= NF; i++) {
        if ($i ~ /^Topic: /) t = substr($i, 8)
        if ($i ~ /^PartitionCount: /) n = substr($i, 17)
      }
      print t, n
    }' <<<"$out"
}

ensure_topics() {
  local topic attempt log="$LOG_DIR/topics.log" counts count bad=""
  : >"$log"
  for topic in "${TOPICS[@]}"; do
    for attempt in 1 2 3; do
      local configs=()
      [[ -z ${TOPIC_CONFIGS[$topic]:-} ]] || configs=(--config "${TOPIC_CONFIGS[$topic]}")
      if kafka_tool 60 org.apache.kafka.tools.TopicCommand --bootstrap-server "$BOOTSTRAP" \
        --create --if-not-exists --topic "$topic" --partitions "$PARTITIONS" \
        --replication-factor 1 "${configs[@]}" >>"$log" 2>&1; then
        break
      fi
      ((attempt < 3)) || die "creating topic $topic failed (see $log)"
      sleep 2
    done
  done
  counts="$(describe_counts 2>>"$log")" || die "describing the project topics failed (see $log)"
  for topic in "${TOPICS[@]}"; do
    count="$(awk -v t="$topic" '$1 == t { print $2 }' <<<"$counts")"
    [[ -n $count ]] || die "topic $topic is missing after creation (see $log)"
    [[ $count == "$PARTITIONS" ]] || bad+=" $topic=$count"
  done
  [[ -z $bad ]] || die "topics exist with other partition counts than CARWATCH_PARTITIONS=$PARTITIONS:$bad" \
    "(remove $STATE_DIR while stopped to start afresh)"
  info "topics ready: ${TOPICS[*]} ($PARTITIONS partitions, replication 1)"
}

require_broker() {
  find_java
  local version
  version="$(kafka_version)"
  lib_complete "$version" || die "Kafka jars missing in $LIB_DIR: run '$0 up' first"
  port_open "$PORT" || die "no broker listening on $BOOTSTRAP: run '$0 up' first"
}

cmd_up() {
  local pid started=$SECONDS
  init_state
  take_lock
  find_java
  if pid="$(broker_pid)"; then
    info "already running (pid $pid) on $BOOTSTRAP; not starting another"
    wait_ready "$pid" || die "broker pid $pid is running but does not answer on $BOOTSTRAP"
    ensure_topics
    return 0
  fi
  rm -f "$PID_FILE"
  ! port_open "$PORT" || die "port $PORT on $HOST is taken by a process this script did not start" \
    "for $STATE_DIR; stop it or set CARWATCH_KAFKA_PORT"
  ! port_open "$CONTROLLER_PORT" || die "controller port $CONTROLLER_PORT on $HOST is taken;" \
    "stop that process or set CARWATCH_KAFKA_CONTROLLER_PORT"
  ensure_lib
  mkdir -p "$DATA_DIR"
  render_config
  format_storage

  printf '\n==== %s broker.sh up\n' "$(date '+%Y-%m-%d %H:%M:%S')" >>"$OUT_FILE"
  SERVER_LOG_MARK="$(line_count "$LOG_DIR/server.log")"
  OUT_FILE_MARK="$(line_count "$OUT_FILE")"
  local launcher=()
  # setsid: the broker outlives this script and ignores Ctrl-C sent to the caller's terminal.
  if command -v setsid >/dev/null 2>&1; then
    launcher=(setsid)
  else
    launcher=(nohup)
  fi
  # HEAP_OPTS is a flag list by design (KAFKA_HEAP_OPTS style), so it is split on spaces.
  # shellcheck disable=SC2086
  "${launcher[@]}" "$JAVA" $HEAP_OPTS "${BROKER_JVM_OPTS[@]}" \
    -Dkafka.logs.dir="$LOG_DIR" \
    -Dlog4j2.configurationFile="$KAFKA_DIR/log4j2.properties" \
    -cp "$LIB_DIR/*" kafka.Kafka "$CONFIG_FILE" \
    </dev/null >>"$OUT_FILE" 2>&1 9>&- &
  pid=$!
  echo "$pid" >"$PID_FILE"

  if ! wait_ready "$pid"; then
    last_errors
    stop_pid "$pid"
    rm -f "$PID_FILE"
    die "broker did not answer on $BOOTSTRAP within ${START_TIMEOUT}s; stopped it (logs in $LOG_DIR)"
  fi
  ensure_topics
  info "up: Kafka $(kafka_version) on $BOOTSTRAP (pid $pid, state $STATE_DIR) in $((SECONDS - started))s"
}

cmd_down() {
  local pid started=$SECONDS
  init_state
  take_lock
  if ! pid="$(broker_pid)"; then
    rm -f "$PID_FILE"
    if port_open "$PORT"; then
      info "not running (note: $BOOTSTRAP is in use by a process this script did not start)"
    else
      info "not running"
    fi
    return 0
  fi
  stop_pid "$pid"
  rm -f "$PID_FILE"
  info "stopped (pid $pid) in $((SECONDS - started))s"
}

cmd_status() {
  local pid
  init_state
  if pid="$(broker_pid)"; then
    if port_open "$PORT"; then
      info "running (pid $pid) on $BOOTSTRAP, state $STATE_DIR"
      return 0
    fi
    info "unhealthy: pid $pid is alive but $BOOTSTRAP accepts no connections (logs in $LOG_DIR)"
    return 1
  fi
  if port_open "$PORT"; then
    info "$BOOTSTRAP is in use by a process this script did not start for $STATE_DIR"
    return 1
  fi
  info "stopped (state $STATE_DIR)"
  return 3
}

cmd_topics() {
  init_state
  require_broker
  case "${1:-}" in
    "")
      ensure_topics
      describe_counts | sed 's/^/  /; s/$/ partitions/'
      ;;
    --describe)
      local pattern
      pattern="$(printf '%s|' "${TOPICS[@]}")"
      pattern="${pattern%|}"
      kafka_tool 60 org.apache.kafka.tools.TopicCommand --bootstrap-server "$BOOTSTRAP" \
        --describe --topic "${pattern//./\\.}" || die "describing topics failed"
      ;;
    --list)
      kafka_tool 60 org.apache.kafka.tools.TopicCommand --bootstrap-server "$BOOTSTRAP" --list ||
        die "listing topics failed"
      ;;
    *) usage ;;
  esac
}

main() {
  [[ $# -ge 1 ]] || usage
  check_settings
  local cmd="$1"
  shift
  case "$cmd" in
    up) [[ $# -eq 0 ]] || usage; cmd_up ;;
    down) [[ $# -eq 0 ]] || usage; cmd_down ;;
    status) [[ $# -eq 0 ]] || usage; cmd_status ;;
    topics) [[ $# -le 1 ]] || usage; cmd_topics "$@" ;;
    -h | --help | help) usage ;;
    *) usage ;;
  esac
}

main "$@"
