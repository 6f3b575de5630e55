#!/usr/bin/env bash
# CAR-T Watch demo: broker, worker, clinician web, synthetic feed, alerts printed as they fire.
#
#   scripts/demo.sh            run until Ctrl-C
#   DURATION=60 scripts/demo.sh  stop by itself after 60 s
#
# Creates .venv and installs the package if missing, starts the local broker (scripts/broker.sh;
# left running if it already was), the worker (log: var/demo/worker.log) and the feed (a
# synthetic cohort whose stories exercise every rule), then follows the alerts topic in the
# foreground. Metrics: http://127.0.0.1:9464/metrics. The clinician pages (`carwatch web`, log:
# var/demo/web.log) are printed with their URL and the demo login (user `demo`, a password made
# on the first run and kept in var/demo/web-login.txt). On exit it stops everything it started,
# by pid, and the broker only if it was not running before.
#
# Environment: DURATION (seconds, default: until Ctrl-C), COHORT (patients, default 28),
# RATE (records/s, default 100), NOT_ENROLLED (fraction of never-infused results, default 0.5),
# DEMO_LOG_DIR (logs, web database and demo login; default var/demo),
# PYTHON (default python3), and the CARWATCH_* settings (streams/settings.py, broker.sh).
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_DIR"
VENV="$REPO_DIR/.venv"
LOG_DIR="${DEMO_LOG_DIR:-$REPO_DIR/var/demo}"
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
# The production store: RocksDB (rocksdict), a static group member (a restarted demo worker
# resumes at once). The store lives in the broker's state dir (var/kafka/demo-worker), so it goes
# with the broker's topics: Faust refuses to start on a store that is ahead of a changelog made
# afresh ("ConsistencyError"), which a store kept apart from a new broker would be.
export CARWATCH_STORE="${CARWATCH_STORE:-rocksdb://}"
export CARWATCH_DATA_DIR="${CARWATCH_DATA_DIR:-${CARWATCH_STATE_DIR:-$REPO_DIR/var/kafka}/demo-worker}"
export CARWATCH_GROUP_INSTANCE_ID="${CARWATCH_GROUP_INSTANCE_ID:-demo-worker}"

[[ -z $DURATION || $DURATION =~ ^[1-9][0-9]*$ ]] || {
  echo "demo.sh: DURATION must be a positive number of seconds" >&2
  exit 2
}

say() { echo "demo.sh: $*" >&2; }

if [[ ! -x $VENV/bin/carwatch ]] ||
  ! "$VENV/bin/python" -c "import rocksdict, sqlalchemy, alembic, jinja2, plotly, argon2" 2>/dev/null; then
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
WORKER_PID="" FEED_PID="" TAIL_PID="" TIMER_PID="" WEB_PID=""

cleanup() {
  trap - EXIT INT TERM
  local pid
  for pid in "$TIMER_PID" "$TAIL_PID" "$FEED_PID" "$WEB_PID"; do
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

# The clinician pages: a demo user with a password made once (kept beside the demo's logs).
WEB_DIR="$LOG_DIR/web"
export CARWATCH_UI_DATA_DIR="${CARWATCH_UI_DATA_DIR:-$WEB_DIR}"
export CARWATCH_UI_USERS_FILE="${CARWATCH_UI_USERS_FILE:-$LOG_DIR/web-users.toml}"
LOGIN_FILE="$LOG_DIR/web-login.txt"
if [[ ! -s $LOGIN_FILE || ! -s $CARWATCH_UI_USERS_FILE ]]; then
  (umask 077 && "$VENV/bin/python" -c "import secrets; print(secrets.token_urlsafe(12))" >"$LOGIN_FILE")
  HASH="$("$CARWATCH" web hash-password <"$LOGIN_FILE")"
  (umask 077 && printf '[users.demo]\nname = "Demo clinician"\npassword_hash = "%s"\n' "$HASH" \
    >"$CARWATCH_UI_USERS_FILE")
fi
UI_URL="http://${CARWATCH_UI_HOST:-127.0.0.1}:${CARWATCH_UI_PORT:-8468}/"
say "starting carwatch web (log: $LOG_DIR/web.log) ..."
"$CARWATCH" web >"$LOG_DIR/web.log" 2>&1 &
WEB_PID=$!
for _ in $(seq 1 60); do
  "$VENV/bin/python" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)" \
    "${UI_URL}healthz" 2>/dev/null && break
  kill -0 "$WEB_PID" 2>/dev/null || {
    tail -n 20 "$LOG_DIR/web.log" >&2
    say "carwatch web exited during startup"
    exit 1
  }
  sleep 0.5
done
say "clinician pages: $UI_URL  login: demo / $(cat "$LOGIN_FILE")"

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
