#!/usr/bin/env bash
# An MLflow tracking server on a PostgreSQL backend store, both on 127.0.0.1, for the
# `cluster` tests and for trying the cluster path by hand.  PostgreSQL comes from Debian
# (`make cluster-deps`); `mlflow` and `psycopg2` from the active Python environment
# (`pip install -e '.[cluster]'`).  Every wait is bounded.
#
#   tests/cluster/tracking.sh start   initdb (once) + pg_ctl start + mlflow server; returns when
#                                     /health answers and prints `export MLFLOW_TRACKING_URI=...`
#                                     (idempotent: a running server of ours is left as it is)
#   tests/cluster/tracking.sh stop    stops both and removes their data
#   tests/cluster/tracking.sh uri     prints the tracking URI
#
# Ports: $MMA_PG_PORT (default 15432) and $MMA_MLFLOW_PORT (default 15000), below the kernel's
# ephemeral range (32768-60999: a port there can be taken by any outgoing connection); data, logs and
# artifacts under $MMA_TRACKING_DIR (default /tmp/mma-tracking).  PostgreSQL runs as the
# `postgres` user (it refuses root); the database `mlflow` belongs to the role `mma`.
set -euo pipefail

DIR="${MMA_TRACKING_DIR:-/tmp/mma-tracking}"
PG_PORT="${MMA_PG_PORT:-15432}"
PORT="${MMA_MLFLOW_PORT:-15000}"
WAIT_S="${MMA_TRACKING_WAIT_S:-90}"
PG_BIN="${MMA_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)}"
DB_URI="postgresql://mma:mma@127.0.0.1:$PG_PORT/mlflow"
URI="http://127.0.0.1:$PORT"

log() { echo "tracking.sh: $*" >&2; }
die() { log "$*"; exit 1; }

as_postgres() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

healthy() { timeout -k 1 3 python3 -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1] + '/health', timeout=2)" "$URI" 2>/dev/null; }

pg_up() { [ -s "$DIR/pg/postmaster.pid" ] && as_postgres "$PG_BIN/pg_ctl" -D "$DIR/pg" status >/dev/null 2>&1; }

start_postgres() {
  [ -x "$PG_BIN/initdb" ] || die "PostgreSQL not found under /usr/lib/postgresql: run \`make cluster-deps\`"
  mkdir -p "$DIR"
  if [ "$(id -u)" -eq 0 ]; then chown postgres: "$DIR"; fi
  if [ ! -s "$DIR/pg/PG_VERSION" ]; then
    rm -rf "$DIR/pg"
    as_postgres "$PG_BIN/initdb" -D "$DIR/pg" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
      --encoding=UTF8 --no-instructions >"$DIR/initdb.log" 2>&1 || { cat "$DIR/initdb.log" >&2; die "initdb failed"; }
    fresh=1
  fi
  if ! pg_up; then
    as_postgres "$PG_BIN/pg_ctl" -D "$DIR/pg" -l "$DIR/postgres.log" -w -t "$WAIT_S" \
      -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $DIR" start >/dev/null \
      || { tail -n 20 "$DIR/postgres.log" >&2; die "PostgreSQL did not start within ${WAIT_S} s"; }
  fi
  if [ "${fresh:-0}" = 1 ]; then
    as_postgres "$PG_BIN/psql" -h "$DIR" -p "$PG_PORT" -U postgres -qtA -v ON_ERROR_STOP=1 \
      -c "CREATE ROLE mma LOGIN PASSWORD 'mma'" -c "CREATE DATABASE mlflow OWNER mma" >/dev/null
  fi
}

start() {
  command -v mlflow >/dev/null || die "mlflow not on PATH: activate the project's environment"
  if [ -f "$DIR/mlflow.pid" ] && kill -0 "$(cat "$DIR/mlflow.pid")" 2>/dev/null && healthy; then
    log "already running: $URI (store $DB_URI)"
    echo "export MLFLOW_TRACKING_URI=$URI"
    return 0
  fi
  stop_mlflow
  start_postgres
  mkdir -p "$DIR/artifacts"
  # its own session (setsid): `stop` ends the server and its workers as one process group
  setsid mlflow server --backend-store-uri "$DB_URI" --artifacts-destination "$DIR/artifacts" \
    --host 127.0.0.1 --port "$PORT" --workers 1 </dev/null >"$DIR/mlflow.log" 2>&1 &
  echo $! >"$DIR/mlflow.pid"
  for _ in $(seq $((WAIT_S * 4))); do
    if healthy; then
      log "up: $URI (store $DB_URI, artifacts $DIR/artifacts)"
      echo "export MLFLOW_TRACKING_URI=$URI"
      return 0
    fi
    kill -0 "$(cat "$DIR/mlflow.pid")" 2>/dev/null || { tail -n 30 "$DIR/mlflow.log" >&2; die "mlflow server exited"; }
    sleep 0.25
  done
  tail -n 30 "$DIR/mlflow.log" >&2
  die "mlflow server did not answer $URI/health within ${WAIT_S} s"
}

stop_mlflow() {
  [ -f "$DIR/mlflow.pid" ] || return 0
  local pid
  pid="$(cat "$DIR/mlflow.pid")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || true  # workers that outlived the server
  fi
  rm -f "$DIR/mlflow.pid"
}

stop() {
  stop_mlflow
  if [ -n "$PG_BIN" ] && pg_up; then
    as_postgres "$PG_BIN/pg_ctl" -D "$DIR/pg" -m fast -w -t 30 stop >/dev/null || log "pg_ctl stop failed"
  fi
  rm -rf "$DIR"
  log "stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  uri) echo "$URI" ;;
  *) echo "usage: $0 start|stop|uri" >&2; exit 2 ;;
esac
