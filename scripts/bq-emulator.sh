#!/usr/bin/env bash
# Local BigQuery emulator (PyPI `local-bigquery`, DuckDB-backed) for tests and the demo.
#
#   scripts/bq-emulator.sh install
#   scripts/bq-emulator.sh start  [--port N] [--grpc-port N] [--project P] [--data-dir D] [--fresh]
#   scripts/bq-emulator.sh stop   [--port N]
#   scripts/bq-emulator.sh status [--port N]
#   scripts/bq-emulator.sh kill   [--port N]   SIGKILL (it loses the jobs it was running)
#   scripts/bq-emulator.sh stop-all     every emulator started with this BQ_EMULATOR_RUN_DIR
#
# The installation lives under ${BQ_EMULATOR_HOME:-$HOME/.cache/connector/bq-emulator}:
#   venv/                 Python venv with local-bigquery + duckdb 1.5.5 and its extensions
#   home/                 HOME of the emulator process (DuckDB reads extensions from home/.duckdb)
# Running emulators under ${BQ_EMULATOR_RUN_DIR:-the same folder}:
#   data-PORT/            default data dir per port
#   logs/emulator-PORT.log, run/emulator-PORT.pid
#
# Needs Python >= 3.13: $BQ_EMULATOR_PYTHON, else python3.13 on PATH, else the newest
# $(pyenv root)/versions/3.13+ interpreter. Only PyPI is needed (no other network access).
# Defaults: port 9050, gRPC port = port + 10 (9060), project demo-project.
set -euo pipefail

LOCAL_BIGQUERY_VERSION="0.4.0"
DUCKDB_VERSION="1.5.5"
DUCKDB_EXTENSIONS=(icu json ducklake spatial)
# Dependency versions local-bigquery 0.4.0 was checked with (pip freeze of a working install);
# pinned so that a later release of one of them cannot break CI. Bump PINS_REV when editing.
PINS_REV=1
PINS="annotated-doc==0.0.7 annotated-types==0.8.0 anyio==4.16.0 certifi==2026.10.18 cffi==2.1.1
charset-normalizer==3.5.2 click==8.5.1 cryptography==50.0.2 fastapi==0.165.0 fastavro==1.13.1
google-api-core==2.44.0 google-auth==2.62.2 google-cloud-bigquery-storage==2.43.0
googleapis-common-protos==1.76.0 grpcio==1.85.1 grpcio-status==1.85.1 h11==0.16.0 idna==3.20
mini-racer==0.14.1 numpy==2.5.5 opentelemetry-api==1.45.2 prompt_toolkit==3.0.53 proto-plus==1.29.0
protobuf==7.36.2 pyarrow==26.0.1 pyasn1==0.6.5 pyasn1_modules==0.4.2 pycparser==3.12
pydantic==2.14.3 pydantic-settings==2.16.3 pydantic_core==2.50.4 Pygments==2.21.0
python-dotenv==1.2.4 requests==2.34.2 sqlglot==30.30.0 starlette==1.10.0 typing-inspection==0.4.5
typing_extensions==4.16.0 urllib3==2.8.0 uvicorn==0.54.0 wcwidth==0.9.4"

BQ_HOME="${BQ_EMULATOR_HOME:-$HOME/.cache/connector/bq-emulator}"
VENV="$BQ_HOME/venv"
EMU_HOME="$BQ_HOME/home"
MARKER="$BQ_HOME/installed"
MARKER_CONTENT="local-bigquery==$LOCAL_BIGQUERY_VERSION duckdb==$DUCKDB_VERSION extensions=${DUCKDB_EXTENSIONS[*]} pins=$PINS_REV"
READY_TIMEOUT="${BQ_EMULATOR_READY_TIMEOUT:-60}"
# Where running emulators keep their pid files, logs and data (tests use a folder of their own
# and stop everything in it when they end: stop-all).
RUN_HOME="${BQ_EMULATOR_RUN_DIR:-$BQ_HOME}"

NAME=bq-emulator
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# ---------------------------------------------------------------- python discovery
py_ok() {
  # $1 runs and is Python >= 3.13
  [ -n "$1" ] && "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 13) else 1)' >/dev/null 2>&1
}

find_python() {
  if [ -n "${BQ_EMULATOR_PYTHON:-}" ]; then
    py_ok "$BQ_EMULATOR_PYTHON" || die "BQ_EMULATOR_PYTHON=$BQ_EMULATOR_PYTHON is not a working Python >= 3.13"
    echo "$BQ_EMULATOR_PYTHON"; return
  fi
  local cand
  # python3.13 on PATH (a pyenv shim may exist but fail when 3.13 is not selected: py_ok checks)
  if cand="$(command -v python3.13 2>/dev/null)" && py_ok "$cand"; then
    echo "$cand"; return
  fi
  local root=""
  if command -v pyenv >/dev/null 2>&1; then root="$(pyenv root 2>/dev/null || true)"; fi
  [ -n "$root" ] || root="${PYENV_ROOT:-$HOME/.pyenv}"
  if [ -d "$root/versions" ]; then
    local v
    # newest first; only plain CPython version dirs like 3.13.0, 3.14.1
    while read -r v; do
      cand="$root/versions/$v/bin/python3"
      if py_ok "$cand"; then echo "$cand"; return; fi
    done < <(ls -1 "$root/versions" 2>/dev/null | grep -E '^3\.[0-9]+(\.[0-9]+)*$' | sort -rV)
  fi
  die "no Python >= 3.13 found (local-bigquery needs it). Tried \$BQ_EMULATOR_PYTHON, python3.13 on PATH, $root/versions/3.13+/bin/python3. Set BQ_EMULATOR_PYTHON=/path/to/python3.13."
}

# ---------------------------------------------------------------- install
is_installed() {
  [ -f "$MARKER" ] && [ "$(cat "$MARKER")" = "$MARKER_CONTENT" ] && [ -x "$VENV/bin/local-bigquery" ] || return 1
  local e
  for e in "${DUCKDB_EXTENSIONS[@]}"; do
    compgen -G "$EMU_HOME/.duckdb/extensions/v$DUCKDB_VERSION/*/$e.duckdb_extension" >/dev/null || return 1
  done
}

do_install() {
  mkdir -p "$BQ_HOME"
  # serialize concurrent installs (two `start` calls at once)
  exec 9>"$BQ_HOME/.install.lock"
  flock 9
  if is_installed; then
    exec 9>&-
    return 0
  fi
  local t0=$SECONDS py
  py="$(find_python)"
  log "installing local-bigquery $LOCAL_BIGQUERY_VERSION with $py ($("$py" --version 2>&1)) into $VENV"
  rm -f "$MARKER"
  rm -rf "$VENV"
  "$py" -m venv "$VENV"
  local pip=("$VENV/bin/python" -m pip --disable-pip-version-check --no-input -q)
  local constraints="$BQ_HOME/constraints.txt"
  tr ' ' '\n' <<<"$PINS" | grep -v '^$' >"$constraints"
  "${pip[@]}" install -c "$constraints" "local-bigquery==$LOCAL_BIGQUERY_VERSION"
  # local-bigquery pulls a duckdb that downloads its extensions from the internet at run time.
  # PyPI ships the extensions only as packages for duckdb 1.5.5: downgrade and install them.
  local pkgs=("duckdb==$DUCKDB_VERSION") e
  for e in "${DUCKDB_EXTENSIONS[@]}"; do pkgs+=("duckdb-extension-$e==$DUCKDB_VERSION"); done
  "${pip[@]}" install --no-deps "${pkgs[@]}"

  local platform
  platform="$("$VENV/bin/python" -c 'import duckdb; print(duckdb.sql("PRAGMA platform").fetchone()[0])')"
  local dest="$EMU_HOME/.duckdb/extensions/v$DUCKDB_VERSION/$platform"
  mkdir -p "$dest"
  for e in "${DUCKDB_EXTENSIONS[@]}"; do
    local src
    src="$("$VENV/bin/python" - "$e" <<'PY'
import glob, importlib, os, sys
name = sys.argv[1]
mod = importlib.import_module("duckdb_extension_" + name)
base = os.path.dirname(mod.__file__)
hits = glob.glob(os.path.join(base, "**", name + ".duckdb_extension"), recursive=True)
if not hits:
    sys.exit("no %s.duckdb_extension under %s" % (name, base))
print(hits[0])
PY
)"
    cp -f "$src" "$dest/"
  done
  # check DuckDB really loads them offline from that HOME
  HOME="$EMU_HOME" "$VENV/bin/python" - "${DUCKDB_EXTENSIONS[@]}" <<'PY'
import sys, duckdb
con = duckdb.connect()
con.execute("SET autoinstall_known_extensions=false")
for name in sys.argv[1:]:
    con.execute("LOAD " + name)
PY
  echo "$MARKER_CONTENT" >"$MARKER"
  log "installed in $((SECONDS - t0)) s"
  exec 9>&-
}

# ---------------------------------------------------------------- run control
PORT=9050
GRPC_PORT=""
PROJECT="demo-project"
DATA_DIR=""
FRESH=0

parse_opts() {
  while [ $# -gt 0 ]; do
    case "$1" in
      --port) PORT="${2:?--port needs a value}"; shift 2 ;;
      --port=*) PORT="${1#*=}"; shift ;;
      --grpc-port) GRPC_PORT="${2:?--grpc-port needs a value}"; shift 2 ;;
      --grpc-port=*) GRPC_PORT="${1#*=}"; shift ;;
      --project) PROJECT="${2:?--project needs a value}"; shift 2 ;;
      --project=*) PROJECT="${1#*=}"; shift ;;
      --data-dir) DATA_DIR="${2:?--data-dir needs a value}"; shift 2 ;;
      --data-dir=*) DATA_DIR="${1#*=}"; shift ;;
      --fresh) FRESH=1; shift ;;
      -h|--help) usage ;;
      *) die "unknown option: $1" ;;
    esac
  done
  [[ "$PORT" =~ ^[0-9]+$ ]] || die "bad --port: $PORT"
  [ -n "$GRPC_PORT" ] || GRPC_PORT=$((PORT + 10))
  [[ "$GRPC_PORT" =~ ^[0-9]+$ ]] || die "bad --grpc-port: $GRPC_PORT"
  [[ "$PROJECT" =~ ^[a-z0-9][a-z0-9.:-]*$ ]] || die "bad --project: $PROJECT (lower-case letters, digits, '-')"
  [ -n "$DATA_DIR" ] || DATA_DIR="$RUN_HOME/data-$PORT"
  PID_FILE="$RUN_HOME/run/emulator-$PORT.pid"
  LOG_FILE="$RUN_HOME/logs/emulator-$PORT.log"
  URL="http://127.0.0.1:$PORT"
}

# HTTP status of GET $1 ("000" when nothing answers)
http_status() {
  if command -v curl >/dev/null 2>&1; then
    curl -s -o /dev/null -w '%{http_code}' --max-time 3 "$1" 2>/dev/null || true
  else
    python3 - "$1" <<'PY' 2>/dev/null || echo 000
import sys, urllib.request, urllib.error
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=3).status)
except urllib.error.HTTPError as e:
    print(e.code)
except Exception:
    print("000")
PY
  fi
}

ready() { [ "$(http_status "$URL/bigquery/v2/projects/$PROJECT/datasets")" = "200" ]; }

alive() {
  # $1 is a live (not zombie) local-bigquery process
  local pid="$1" state
  kill -0 "$pid" 2>/dev/null || return 1
  if [ -r "/proc/$pid/stat" ]; then
    state="$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1)"
    [ "$state" != "Z" ] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q local-bigquery || return 1
  fi
}

running_pid() {
  # pid from the pid file when that process is alive
  local pid
  [ -f "$PID_FILE" ] || return 1
  pid="$(cat "$PID_FILE" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] && alive "$pid" || return 1
  echo "$pid"
}

cmd_start() {
  parse_opts "$@"
  if ready; then
    log "already running on port $PORT"
    echo "$URL"
    return 0
  fi
  do_install
  local pid
  if pid="$(running_pid)"; then
    log "process $pid from $PID_FILE is up but not answering yet; waiting"
  else
    port_busy "$PORT" && die "port $PORT is in use by something that is not a BigQuery emulator"
    port_busy "$GRPC_PORT" && die "gRPC port $GRPC_PORT is in use (pass --grpc-port)"
    [ "$FRESH" = 1 ] && rm -rf "$DATA_DIR"
    mkdir -p "$DATA_DIR" "$RUN_HOME/run" "$RUN_HOME/logs"
    : >"$LOG_FILE"
    rm -f "$PID_FILE"
    # setsid: own session/process group so it survives this shell and stop can end the group
    HOME="$EMU_HOME" nohup setsid bash -c 'echo $$ >"$0"; exec "$@"' "$PID_FILE" \
      "$VENV/bin/local-bigquery" serve --host 127.0.0.1 --port "$PORT" --grpc-port "$GRPC_PORT" \
      --project "$PROJECT" --data-dir "$DATA_DIR" \
      </dev/null >>"$LOG_FILE" 2>&1 &
    local i
    for i in $(seq 50); do [ -s "$PID_FILE" ] && break; sleep 0.1; done
    pid="$(cat "$PID_FILE")"
    log "started pid $pid (port $PORT, gRPC $GRPC_PORT, project $PROJECT, data $DATA_DIR, log $LOG_FILE)"
  fi
  local deadline=$((SECONDS + READY_TIMEOUT))
  until ready; do
    if ! alive "$pid"; then
      log "emulator exited before it was ready; log tail ($LOG_FILE):"
      tail -n 40 "$LOG_FILE" >&2 || true
      rm -f "$PID_FILE"
      exit 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "not ready after ${READY_TIMEOUT}s; log tail ($LOG_FILE):"
      tail -n 40 "$LOG_FILE" >&2 || true
      exit 1
    fi
    sleep 0.3
  done
  log "ready"
  echo "$URL"
}

cmd_stop() {
  parse_opts "$@"
  local pid
  if ! pid="$(running_pid)"; then
    rm -f "$PID_FILE"
    if ready; then die "something answers on port $PORT but it was not started by this script (no live pid in $PID_FILE)"; fi
    log "not running on port $PORT"
    return 0
  fi
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  local i
  for i in $(seq 100); do alive "$pid" || break; sleep 0.1; done
  if alive "$pid"; then
    log "pid $pid did not stop after 10 s; killing"
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$PID_FILE"
  log "stopped pid $pid (port $PORT)"
}

# SIGKILL: the emulator dies without finishing what it runs (tests of lost jobs)
cmd_kill() {
  parse_opts "$@"
  local pid
  pid="$(running_pid)" || { log "not running on port $PORT"; return 0; }
  kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  for _ in $(seq 50); do alive "$pid" || break; sleep 0.1; done
  rm -f "$PID_FILE"
  log "killed pid $pid (port $PORT)"
}

cmd_status() {
  parse_opts "$@"
  local pid=""
  pid="$(running_pid || true)"
  if ready; then
    echo "running: $URL${pid:+ (pid $pid)}"
    return 0
  fi
  if [ -n "$pid" ]; then
    echo "starting or unhealthy: pid $pid, $URL not answering (log $LOG_FILE)"
  else
    echo "not running on port $PORT"
  fi
  return 3
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
  install)
    [ $# -eq 0 ] || die "install takes no options"
    if is_installed; then log "already installed ($MARKER_CONTENT) in $BQ_HOME"; else do_install; fi ;;
  start) cmd_start "$@" ;;
  stop) cmd_stop "$@" ;;
  kill) cmd_kill "$@" ;;
  status) cmd_status "$@" ;;
  stop-all)
    for f in "$RUN_HOME"/run/emulator-*.pid; do
      [ -f "$f" ] || continue
      p="${f##*/emulator-}"
      cmd_stop --port "${p%.pid}"
    done ;;
  *) usage ;;
esac
