#!/usr/bin/env bash
# CAR-T Watch demo: broker, worker, synthetic feed, alerts printed as they fire.
#
#   scripts/demo.sh            run until Ctrl-C
#   DURATION=60 scripts/demo.sh  stop by itself after 60 s
#
# Creates .venv and installs the package if missing, starts the local broker (scripts/broker.sh;
# left running if it already was), the worker (log: var/demo/worker.log) and the feed (a
# synthetic cohort whose stories exercise every rule), then follows the alerts topic in the
# foreground. Metrics: http://127.0.0.1:9464/metrics. On exit it stops everything it started,
# by pid, and the broker only if it was not running before.
#
# Environment: DURATION (seconds, default: until Ctrl-C), COHORT (patients, default 28),
# RATE (records/s, default 100), NOT_ENROLLED (fraction of never-infused results, default 0.5),
# PYTHON (default python3), and the CARWATCH_* settings (streams/settings.py, broker.sh).
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_DIR"
VENV="$REPO_DIR/.venv"
LOG_DIR="$REPO_DIR/var/demo"
DURATION="${DURATION:-}"
COHORT="${COHORT:-28}"
RATE="${RATE:-100}"
NOT_ENROLLED="${NOT_ENROLLED:-0.5}"
PYTHON="${PYTHON:-python3}"
export CARWATCH_TICK_INTERVAL_SECONDS="${CARWATCH_TICK_INTERVAL_SECONDS:-30}"
export CARWATCH_BROKER_SESSION_TIMEOUT_SECONDS="${CARWATCH_BROKER_SESSION_TIMEOUT_SECONDS:-10}"
if [[ -n ${CARWATCH_KAFKA_PORT:-} && -z ${CARWATCH_BROKER_URL:-} ]]; then
  export CARWATCH_BROKER_URL="kafka://127.0.0.1:$CARWATCH_KAFKA_PORT"
fi
if [[ -n ${CARWATCH_PARTITIONS:-} ]]; then
  export CARWATCH_PARTITIONS
fi
# One consumer group for all demo runs: a new run resumes where the last stopped (its patients
# recovered from the changelog) instead of re-reading every earlier run's records.
export CARWATCH_APP_ID="${CARWATCH_APP_ID:-carwatch-demo}"
# The production store: RocksDB (rocksdict) under var/demo/worker, a static group member (a
# restarted demo worker resumes at once).
export CARWATCH_STORE="${CARWATCH_STORE:-rocksdb://}"
export CARWATCH_DATA_DIR="${CARWATCH_DATA_DIR:-$REPO_DIR/var/demo/worker}"
export CARWATCH_GROUP_INSTANCE_ID="${CARWATCH_GROUP_INSTANCE_ID:-demo-worker}"

[[ -z $DURATION || $DURATION =~ ^[1-9][0-9]*$ ]] || {
  echo "demo.sh: DURATION must be a positive number of seconds" >&2
  exit 2
}

say() { echo "demo.sh: $*" >&2; }

if [[ ! -x $VENV/bin/carwatch ]] || ! "$VENV/bin/python" -c "import rocksdict" 2>/dev/null; then
  say "creating $VENV and installing the package with the RocksDB store (one-time) ..."
  [[ -x $VENV/bin/python ]] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install -q -e "$REPO_DIR[rocksdict]"
fi
CARWATCH="$VENV/bin/carwatch"
mkdir -p "$LOG_DIR"

BROKER_WAS_RUNNING=0
if bash scripts/broker.sh status >/dev/null 2>&1; then
  BROKER_WAS_RUNNING=1
fi
WORKER_PID="" FEED_PID="" TAIL_PID="" TIMER_PID=""

cleanup() {
  trap - EXIT INT TERM
  local pid
  for pid in "$TIMER_PID" "$TAIL_PID" "$FEED_PID"; do
    if [[ -n $pid ]]; then kill -TERM "$pid" 2>/dev/null || true; fi
  done
  if [[ -n $WORKER_PID ]] && kill -0 "$WORKER_PID" 2>/dev/null; then
    say "stopping the worker (pid $WORKER_PID) ..."
    kill -TERM "$WORKER_PID" 2>/dev/null || true
    for _ in $(seq 1 60); do
      kill -0 "$WORKER_PID" 2>/dev/null || break
      sleep 0.5
    done
    kill -KILL "$WORKER_PID" 2>/dev/null || true
  fi
  wait 2>/dev/null || true
  if ((BROKER_WAS_RUNNING == 0)); then
    bash scripts/broker.sh down >&2 || true
  else
    say "leaving the broker running (it was running before the demo)"
  fi
  say "done; logs in $LOG_DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

bash scripts/broker.sh up >&2

say "starting the worker (log: $LOG_DIR/worker.log) ..."
"$CARWATCH" worker >"$LOG_DIR/worker.log" 2>&1 &
WORKER_PID=$!

for _ in $(seq 1 120); do
  grep -q "Worker ready" "$LOG_DIR/worker.log" 2>/dev/null && break
  kill -0 "$WORKER_PID" 2>/dev/null || {
    tail -n 20 "$LOG_DIR/worker.log" >&2
    say "the worker exited during startup"
    exit 1
  }
  sleep 0.5
done
grep -q "Worker ready" "$LOG_DIR/worker.log" || {
  say "the worker did not become ready within 60 s (see $LOG_DIR/worker.log)"
  exit 1
}
say "worker ready; metrics on http://${CARWATCH_METRICS_HOST:-127.0.0.1}:${CARWATCH_METRICS_PORT:-9464}/metrics"

if [[ -n $DURATION ]]; then
  say "following new alerts for $DURATION s (Ctrl-C stops earlier)"
  "$CARWATCH" alerts tail --timeout "$DURATION" &
else
  say "following new alerts (Ctrl-C stops everything)"
  "$CARWATCH" alerts tail &
fi
TAIL_PID=$!
sleep 2 # the tail starts at the end of the topic: let it get there before the first record

say "feeding $COHORT synthetic patients at $RATE records/s (log: $LOG_DIR/feed.log) ..."
"$CARWATCH" feed --cohort "$COHORT" --rate "$RATE" --not-enrolled-fraction "$NOT_ENROLLED" \
  >"$LOG_DIR/feed.log" 2>&1 &
FEED_PID=$!

wait "$TAIL_PID" || true
TAIL_PID=""
