#!/usr/bin/env bash
# Run the demo: sync three MariaDB tenant databases (shop1..shop3) into a local BigQuery emulator.
#
#   scripts/demo.sh
#
# Steps: a private MariaDB of its own (scripts/private-mariadb.sh: data in demo-work/mariadb, a
# free port; the machine's own MariaDB and its databases are never touched) -> BigQuery
# emulator on 127.0.0.1:$DEMO_BQ_PORT (scripts/bq-emulator.sh) -> demo data (scripts/demo-data.sh)
# -> cargo build --release -p connector-run -> demo-work/params.json -> target/release/connector-run
# --pipeline demo-work/params.json -> read a few rows back from the emulator -> show the sync
# state -> stop the private MariaDB and the emulator.
#
# Env:
#   DEMO_BQ_PORT       emulator REST port (9050; its gRPC port is DEMO_BQ_PORT + 10)
#   DEMO_FRESH         1 (default): fresh data, emulator and state, so every run prints the same
#                      thing. 0: keep them (with DEMO_KEEP=1 before: the second run is incremental)
#   DEMO_KEEP          1: leave the MariaDB and the emulator running at the end, to look around
#   DEMO_SCALE         row-count multiplier for the demo data (1)
#   DEMO_SKIP_BUILD    1: use the existing target/release/connector-run, no cargo build
#   CONNECTOR_RUN_ARGS extra arguments appended to the connector-run command line
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

BQ_PORT="${DEMO_BQ_PORT:-9050}"
BQ_PROJECT="demo-project"
BQ_DATASET="demo"
FRESH="${DEMO_FRESH:-1}"
KEEP="${DEMO_KEEP:-0}"
WORK="demo-work"
PARAMS="$WORK/params.json"
STATUS_DIR="$WORK/sync_status"
SYNC_LOG="$WORK/sync.log"
BIN="target/release/connector-run"
TENANTS=(shop1 shop2 shop3)

if [ -t 1 ]; then
  step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
else
  step() { printf '\n==> %s\n' "$*"; }
fi
NAME=demo
source scripts/lib.sh

[[ "$BQ_PORT" =~ ^[0-9]+$ ]] || die "DEMO_BQ_PORT must be a port number (got '$BQ_PORT')"
for tool in curl python3; do command -v "$tool" >/dev/null 2>&1 || die "$tool is needed"; done

T0=$SECONDS

step "MariaDB: a private server for the demo ($WORK/mariadb)"
if [ "$FRESH" = 1 ]; then
  bash scripts/private-mariadb.sh stop --dir "$WORK/mariadb" >/dev/null 2>&1 || true
  rm -rf "$WORK/mariadb"
fi
MYSQL_PORT="$(bash scripts/private-mariadb.sh start --dir "$WORK/mariadb")"
export MYSQL_PORT
stop_servers() {
  [ "$KEEP" = 1 ] && return 0
  bash scripts/bq-emulator.sh stop --port "$BQ_PORT" >/dev/null 2>&1 || true
  bash scripts/private-mariadb.sh stop --dir "$WORK/mariadb" >/dev/null 2>&1 || true
}
trap stop_servers EXIT

step "BigQuery emulator on port $BQ_PORT"
START_ARGS=(--port "$BQ_PORT" --project "$BQ_PROJECT")
if [ "$FRESH" = 1 ]; then
  if bash scripts/bq-emulator.sh status --port "$BQ_PORT" >/dev/null 2>&1; then
    echo "restarting it with an empty data dir (DEMO_FRESH=1)"
    bash scripts/bq-emulator.sh stop --port "$BQ_PORT"
  fi
  START_ARGS+=(--fresh)
fi
BQ_ENDPOINT="$(bash scripts/bq-emulator.sh start "${START_ARGS[@]}")"
echo "endpoint: $BQ_ENDPOINT"

step "Demo data (shop1, shop2, shop3), and a user that may only read them"
bash scripts/demo-data.sh
# The least privilege the tool needs: SELECT on the tenants' databases (docs/operations.md).
mariadb --no-defaults --protocol=TCP -h127.0.0.1 -P"$MYSQL_PORT" -uroot -e "
  CREATE USER IF NOT EXISTS 'sync_reader'@'127.0.0.1' IDENTIFIED BY 'demo-reader-pass';
  GRANT SELECT ON \`shop%\`.* TO 'sync_reader'@'127.0.0.1';"

step "Build connector-run (release)"
if [ "${DEMO_SKIP_BUILD:-0}" = 1 ]; then
  echo "DEMO_SKIP_BUILD=1: using the existing $BIN"
else
  cargo build --release -p connector-run
fi
[ -x "$BIN" ] || die "$BIN not found (build it with: cargo build --release -p connector-run)"

step "Pipeline parameters: $PARAMS"
mkdir -p "$WORK"
if [ "$FRESH" = 1 ]; then rm -rf "$STATUS_DIR" "$SYNC_LOG"; fi
DB_LIST="$(IFS=,; echo "${TENANTS[*]}")"
python3 - "$PARAMS" "$MYSQL_PORT" "$DB_LIST" "$BQ_PROJECT" "$BQ_DATASET" "$BQ_ENDPOINT" "$STATUS_DIR" "$SYNC_LOG" <<'PY'
import json, sys
path, port, dbs, project, dataset, endpoint, status_dir, log_file = sys.argv[1:]
params = {
    "db_host": "127.0.0.1",
    "db_port": port,
    "db_user": "sync_reader",
    "db_pass": "demo-reader-pass",
    "db_list": dbs,
    "table_list": "users,orders,products,page_views",
    "bq_project": project,
    "bq_dataset": dataset,
    "bq_endpoint": endpoint,
    "lookback_minutes": 10,
    "batch_size": 1000,
    "status_dir": status_dir,
    "log_file": log_file,
}
with open(path, "w") as f:
    json.dump(params, f, indent=2)
    f.write("\n")
PY
cat "$PARAMS"

EXTRA=()
read -r -a EXTRA <<<"${CONNECTOR_RUN_ARGS:-}" || true
CMD=("$BIN" --pipeline "$PARAMS" ${EXTRA[@]+"${EXTRA[@]}"})
step "Sync: ${CMD[*]}"
t_sync=$SECONDS
set +e
"${CMD[@]}"
rc=$?
set -e
if [ "$rc" -ne 0 ]; then
  echo
  echo "demo: connector-run failed with exit code $rc after $((SECONDS - t_sync)) s" >&2
  echo "demo: its log: $ROOT/$SYNC_LOG; state: $ROOT/$STATUS_DIR/" >&2
  exit "$rc"
fi
echo "connector-run finished (exit code 0) in $((SECONDS - t_sync)) s"

# Formats a jobs.query response (stdin) as a table. argv: SQL, optional file for the raw rows.
FORMAT_PY="$(cat <<'PY'
import json, sys, unicodedata
sql, out = sys.argv[1], sys.argv[2]
print("query: " + sql)
try:
    r = json.load(sys.stdin)
except ValueError as e:
    sys.exit("demo: error: the emulator did not answer with JSON: %s" % e)
if "error" in r:
    sys.exit("demo: error: query failed: %s" % r["error"].get("message", r["error"]))
if not r.get("jobComplete", False):
    sys.exit("demo: error: query did not complete within 60 s (job %s)" % r.get("jobReference"))
names = [f["name"] for f in r.get("schema", {}).get("fields", [])]

def cell(v):
    if v is None:
        return "NULL"
    if isinstance(v, dict) and "v" in v:
        return cell(v["v"])
    if isinstance(v, dict) and "f" in v:
        return "{" + ", ".join(cell(x) for x in v["f"]) + "}"
    if isinstance(v, list):
        return "[" + ", ".join(cell(x) for x in v) + "]"
    return str(v)

def width(s):
    # terminal columns: CJK and emoji take two
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in s)

def pad(s, w):
    return s + " " * (w - width(s))

rows = [[cell(c.get("v")) for c in row.get("f", [])] for row in r.get("rows", [])]
widths = [max([width(n)] + [width(row[i]) for row in rows]) for i, n in enumerate(names)]
line = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
print(line)
print("| " + " | ".join(pad(n, w) for n, w in zip(names, widths)) + " |")
print(line)
for row in rows:
    print("| " + " | ".join(pad(v, w) for v, w in zip(row, widths)) + " |")
print(line)
print("(%d row%s)" % (len(rows), "" if len(rows) == 1 else "s"))
if out:
    with open(out, "w") as f:
        json.dump({"names": names, "rows": rows}, f)
PY
)"

# POST a standard-SQL query to the emulator and print the result as a table.
# $1: SQL; $2 (optional): file to also write the rows to as JSON (for the check below)
bq_query() {
  local body resp
  body="$(python3 -c 'import json, sys; print(json.dumps({"query": sys.argv[1], "useLegacySql": False, "timeoutMs": 60000}))' "$1")"
  resp="$(curl -sS -X POST -H 'Content-Type: application/json' --max-time 90 \
    "$BQ_ENDPOINT/bigquery/v2/projects/$BQ_PROJECT/queries" -d "$body")" || die "query request failed: $1"
  python3 -c "$FORMAT_PY" "$1" "${2:-}" <<<"$resp"
}

step "Read back from BigQuery ($BQ_ENDPOINT, dataset $BQ_DATASET)"
COUNTS_JSON="$(mktemp)"
trap 'rm -f "$COUNTS_JSON"; stop_servers' EXIT
bq_query "SELECT tenant_id, COUNT(*) AS n FROM $BQ_DATASET.orders GROUP BY tenant_id ORDER BY tenant_id" "$COUNTS_JSON"
echo
bq_query "SELECT tenant_id, id, email, name, balance FROM $BQ_DATASET.users ORDER BY id, tenant_id LIMIT 5"

# the orders counts must match the source databases
SOURCE_COUNTS="$(for db in "${TENANTS[@]}"; do
  printf '%s %s\n' "$db" "$(mariadb --no-defaults --protocol=TCP -h127.0.0.1 -P"$MYSQL_PORT" -uroot -N -B -e "SELECT COUNT(*) FROM \`$db\`.orders")"
done)"
echo
python3 - "$COUNTS_JSON" <<PY
import json, sys
source = dict(line.split() for line in """$SOURCE_COUNTS""".strip().splitlines())
bq = {row[0]: row[1] for row in json.load(open(sys.argv[1]))["rows"]}
print("orders in MariaDB: " + ", ".join("%s=%s" % kv for kv in sorted(source.items())))
if set(bq) == set(source):
    bad = [t for t in source if bq[t] != source[t]]
    if bad:
        sys.exit("demo: error: orders counts differ for %s (BigQuery %s, MariaDB %s)" % (bad, bq, source))
    print("orders counts per tenant match")
else:
    total_bq = sum(int(v) for v in bq.values())
    total_src = sum(int(v) for v in source.values())
    print("note: BigQuery tenant_id values %s are not the database names" % sorted(bq))
    if total_bq != total_src:
        sys.exit("demo: error: %d orders in BigQuery, %d in MariaDB" % (total_bq, total_src))
    print("orders total matches (%d)" % total_src)
PY

step "Sync state: $STATUS_DIR/shop1.json"
if [ -f "$STATUS_DIR/shop1.json" ]; then
  cat "$STATUS_DIR/shop1.json"
  echo
else
  die "$STATUS_DIR/shop1.json was not written"
fi

step "Done in $((SECONDS - T0)) s"
echo "  parameters:     $ROOT/$PARAMS"
echo "  sync state:     $ROOT/$STATUS_DIR/ (one JSON file per tenant)"
echo "  sync log:       $ROOT/$SYNC_LOG"
if [ "$KEEP" = 1 ]; then
  echo "  MariaDB:        127.0.0.1:$MYSQL_PORT (root, no password; data in $ROOT/$WORK/mariadb)"
  echo "                  stop it with: scripts/private-mariadb.sh stop --dir $WORK/mariadb"
  echo "  emulator:       $BQ_ENDPOINT (project $BQ_PROJECT, dataset $BQ_DATASET)"
  echo "                  stop it with: scripts/bq-emulator.sh stop --port $BQ_PORT"
else
  echo "  the demo's MariaDB and emulator are stopped again (DEMO_KEEP=1 leaves them running)"
fi
