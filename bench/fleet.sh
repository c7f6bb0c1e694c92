#!/usr/bin/env bash
# What a run costs over a fleet of small tenants: the fixed cost per tenant x table, not rows.
#
#   bench/fleet.sh                       # 200 x 10, 1,000 x 10 and 1,000 x 20 tenants x tables, 100 rows each
#                                        # (1,000 x 10 beside 200 x 10: what five times the tenants
#                                        # cost; beside 1,000 x 20: what twice the tables cost)
#   FLEET_SIZES="50x5" bench/fleet.sh    # other sizes (TENANTSxTABLES, space-separated)
#   FLEET_ROWS=100 FLEET_POOL=4          # rows per table, the tool's pool_size
#   FLEET_BIN=/path/to/connector-run     # another build (default: target/release, built first)
#   FLEET_REUSE_DISCOVERY=false          # ask information_schema in full every run (default: the
#                                        # definitions the full run read are reused while unchanged)
#
# Everything runs on a private MariaDB (own port and data folder under bench-work/fleet, binlog
# off; the folder is kept between runs so the fleet is built once) and a fresh local BigQuery
# emulator. For each size it runs, with the release build:
#   1. a full sync of every tenant and table (a fresh dataset and state);
#   2. an incremental run after 1 % of every table's rows changed (one row in a hundred);
#   3. an incremental run with nothing changed.
# The full sync starts without kept definitions (`schema_cache_dir` under bench-work/fleet, emptied
# first), as a first run would; the incremental runs reuse what it kept (`reuse_discovery`).
# Each line prints wall time, the tool's CPU seconds, its peak RSS, the MySQL statements the
# server executed meanwhile (its own `Questions` counter, and per tenant x table), the commands
# it answered (`Questions` leaves out each prepared statement's PREPARE and CLOSE), the server's
# and the emulator's CPU seconds, and the BigQuery jobs of the run (from the emulator's job
# list).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
NAME=fleet source scripts/lib.sh
[ $# -eq 0 ] || usage
SIZES="${FLEET_SIZES:-200x10 1000x10 1000x20}"
ROWS="${FLEET_ROWS:-100}"
POOL="${FLEET_POOL:-4}"
BQ_PORT="${FLEET_BQ_PORT:-9071}"
WORK="$ROOT/bench-work/fleet"
mkdir -p "$WORK"

bash scripts/private-mariadb.sh start --dir "$WORK/mariadb" --no-binlog --no-tls >/dev/null
MYSQL_PORT=$(cat "$WORK/mariadb/port")
MYSQL=(mariadb --no-defaults -h127.0.0.1 -P"$MYSQL_PORT" -uroot --password= -N -B)
# A server that holds tens of thousands of tables keeps them open (MariaDB's defaults, 2,000 and
# 400, are for a few hundred), as a fleet's server is configured.
"${MYSQL[@]}" -e "SET GLOBAL table_open_cache = 60000, table_definition_cache = 60000, innodb_buffer_pool_size = 1073741824"
SERVER_PID=$(cat "$WORK/mariadb/mysqld.pid" 2>/dev/null || true)
bash scripts/bq-emulator.sh start --port "$BQ_PORT" --project fleet-project --fresh >/dev/null
EMULATOR_PID=$(bash scripts/bq-emulator.sh status --port "$BQ_PORT" | sed -n 's/.*(pid \([0-9]*\)).*/\1/p' || true)
# Both servers stop at the end; the fleet's data folder stays for the next run.
trap 'bash scripts/bq-emulator.sh stop --port "$BQ_PORT" >/dev/null 2>&1 || true
      bash scripts/private-mariadb.sh stop --dir "$WORK/mariadb" >/dev/null 2>&1 || true' EXIT
# Another build given is used as it is: building this checkout too would take minutes for nothing.
if [ -z "${FLEET_BIN:-}" ]; then cargo build --release -p connector-run 2>&1 | tail -1; fi
BIN="${FLEET_BIN:-$ROOT/target/release/connector-run}"

table_names() { for t in $(seq 1 "$1"); do printf 't%02d ' "$t"; done; }
tenant_names() { for d in $(seq 1 "$1"); do printf 'fleet_%04d ' "$d"; done; }

# build_fleet TENANTS TABLES: every tenant database with every table of ROWS rows (skipped when
# the last one exists with its rows).
build_fleet() {
  local tenants="$1" tables="$2" last
  last="fleet_$(printf %04d "$tenants").t$(printf %02d "$tables")"
  if [ "$("${MYSQL[@]}" -e "SELECT COUNT(*) FROM $last" 2>/dev/null || echo 0)" = "$ROWS" ]; then
    return 0
  fi
  local t0=$SECONDS
  for db in $(tenant_names "$tenants"); do
    echo "CREATE DATABASE IF NOT EXISTS $db CHARACTER SET utf8mb4; USE $db;"
    for t in $(table_names "$tables"); do
      cat <<SQL
DROP TABLE IF EXISTS $t;
CREATE TABLE $t (id BIGINT PRIMARY KEY, account_id BIGINT NOT NULL, amount DECIMAL(12,2) NOT NULL,
  status VARCHAR(16) NOT NULL, note VARCHAR(200), created_at DATETIME(6) NOT NULL,
  updated_at DATETIME(6) NOT NULL, KEY (updated_at));
INSERT INTO $t SELECT seq, seq % 17, seq * 1.25, ELT(seq % 3 + 1, 'new', 'paid', 'shipped'),
  IF(seq % 4 = 0, NULL, CONCAT('note ', seq)), TIMESTAMP('2024-01-01') + INTERVAL seq MINUTE,
  TIMESTAMP('2024-06-01') + INTERVAL seq MINUTE FROM seq_1_to_$ROWS;
SQL
    done
  done | "${MYSQL[@]}"
  echo "    fleet ${tenants} x ${tables} built in $((SECONDS - t0)) s"
}

# update_every_table TENANTS TABLES SET: one row in a hundred of every table (id % 100 = 7) set
# to SET.
update_every_table() {
  local tenants="$1" tables="$2" set="$3"
  for db in $(tenant_names "$tenants"); do
    for t in $(table_names "$tables"); do
      echo "UPDATE $db.$t SET $set WHERE id % 100 = 7;"
    done
  done | "${MYSQL[@]}"
}

# change_one_percent TENANTS TABLES: those rows updated now.
change_one_percent() { update_every_table "$1" "$2" "amount = amount + 1, updated_at = NOW(6)"; }

# restore_fleet TENANTS TABLES: those rows as they were built, so every run starts from the same
# data (the full sync's last window is then the last ten minutes of the built rows, not the rows
# an earlier run of this script changed).
restore_fleet() {
  update_every_table "$1" "$2" "amount = id * 1.25, updated_at = TIMESTAMP('2024-06-01') + INTERVAL id MINUTE"
}

questions() { "${MYSQL[@]}" -e "SHOW GLOBAL STATUS LIKE 'Questions'" | awk '{ print $2 }'; }
# commands: Questions plus the PREPAREs and CLOSEs it does not count.
commands() {
  "${MYSQL[@]}" -e "SHOW GLOBAL STATUS WHERE Variable_name IN ('Questions', 'Com_stmt_prepare', 'Com_stmt_close')" |
    awk '{ n += $2 } END { print n }'
}
server_cpu() { process_cpu "$SERVER_PID"; }

# jobs: how many BigQuery jobs the emulator has run so far (its job list, every page).
jobs() {
  python3 - "http://127.0.0.1:$BQ_PORT/bigquery/v2/projects/fleet-project/jobs" <<'PY'
import json, sys, urllib.request
url, jobs, token = sys.argv[1], 0, None
while True:
    with urllib.request.urlopen(url + "?maxResults=1000" + (f"&pageToken={token}" if token else "")) as r:
        page = json.load(r)
    jobs += len(page.get("jobs", []))
    token = page.get("nextPageToken")
    if not token:
        break
print(jobs)
PY
}

# measure LABEL SIZE PAIRS ARGS...: one run of the tool, one result line.
measure() {
  local label="$1" pairs="$2"
  shift 2
  local q0 q1 c0 c1 s0 s1 e0 e1 j0 j1 user sys rss_kb elapsed
  j0=$(jobs)
  q0=$(questions)
  c0=$(commands)
  s0=$(server_cpu)
  e0=$(process_cpu "$EMULATOR_PID")
  /usr/bin/time -f "%e %U %S %M" -o "$WORK/time.txt" "$BIN" --pipeline "$WORK/params.json" -q \
    --report-json "$WORK/report.json" "$@" >"$WORK/run.out" 2>&1 || {
    echo "$label failed:"; tail -20 "$WORK/run.out"; exit 1; }
  s1=$(server_cpu)
  e1=$(process_cpu "$EMULATOR_PID")
  q1=$(questions)
  c1=$(commands)
  read -r elapsed user sys rss_kb < <(tail -1 "$WORK/time.txt")
  j1=$(jobs)
  # The status queries of this function are not the tool's: two of them fall between q0 and q1
  # (c0, and q1 counting itself), and two between c0 and c1.
  awk -v l="$label" -v e="$elapsed" -v u="$user" -v s="$sys" -v m="$rss_kb" -v q=$((q1 - q0 - 2)) -v p="$pairs" \
    -v c=$((c1 - c0 - 2)) -v sv="$(awk -v a="$s0" -v b="$s1" 'BEGIN { print b - a }')" \
    -v ev="$(awk -v a="$e0" -v b="$e1" 'BEGIN { print b - a }')" -v j=$((j1 - j0)) 'BEGIN {
    printf "%-34s %7.1f s wall %6.1f CPU s %6.1f MB RSS %9d statements (%4.1f per tenant x table; %4.1f commands) server %5.1f CPU s, emulator %5.1f CPU s %5d jobs\n",
      l, e, u + s, m / 1024, q, q / p, c / p, sv, ev, j }'
}

for size in $SIZES; do
  tenants="${size%x*}"
  tables="${size#*x}"
  pairs=$((tenants * tables))
  echo "==> $tenants tenants x $tables tables x $ROWS rows (pool_size $POOL, reuse_discovery ${FLEET_REUSE_DISCOVERY:-true})"
  build_fleet "$tenants" "$tables"
  restore_fleet "$tenants" "$tables"
  dataset="fleet_${tenants}x${tables}"
  rm -rf "$WORK/status" "$WORK/discovery"
  cat >"$WORK/params.json" <<JSON
{"db_host": "127.0.0.1", "db_port": "$MYSQL_PORT", "db_user": "root", "db_pass": "",
 "db_list": "$(tenant_names "$tenants" | xargs | tr ' ' ',')", "table_list": "$(table_names "$tables" | xargs | tr ' ' ',')",
 "bq_project": "fleet-project", "bq_dataset": "$dataset", "bq_endpoint": "http://127.0.0.1:$BQ_PORT",
 "pool_size": $POOL, "status_dir": "$WORK/status", "log_file": "$WORK/sync.log",
 "reuse_discovery": ${FLEET_REUSE_DISCOVERY:-true}, "schema_cache_dir": "$WORK/discovery"}
JSON
  measure "full sync" "$pairs" --full
  change_one_percent "$tenants" "$tables"
  measure "incremental, 1 % of rows changed" "$pairs"
  measure "incremental, nothing changed" "$pairs"
done
