#!/usr/bin/env bash
# The console's page loads over a big fleet's state: 1,000 tenants x 50 tables (50,000 tables'
# state as JSON files, as syncs leave them, plus 500 runs of history), served by
# `connector-run serve` (release build); each page fetched 20 times with curl.
#
#   bench/console.sh                      # CONSOLE_TENANTS=1000 CONSOLE_TABLES=50 CONSOLE_PORT=9480
#
# Prints, per page, the median and the slowest of the 20 fetches and the page's size. The target
# (docs/console.md): the overview in under 200 ms on this machine.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
NAME=console source scripts/lib.sh
[ $# -eq 0 ] || usage
TENANTS="${CONSOLE_TENANTS:-1000}"
TABLES="${CONSOLE_TABLES:-50}"
PORT="${CONSOLE_PORT:-9480}"
WORK="$ROOT/bench-work/console"
rm -rf "$WORK"
mkdir -p "$WORK/status/history"
need curl curl
cargo build --release -q -p connector-run
BIN="$ROOT/target/release/connector-run"

log "writing the state of $TENANTS tenants x $TABLES tables"
python3 - "$WORK" "$TENANTS" "$TABLES" <<'PY'
import json, os, sys, datetime, random
work, tenants, tables = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
now = datetime.datetime.utcnow()
random.seed(7)
def ts(d): return d.strftime("%Y-%m-%dT%H:%M:%S.%f")
for d in range(tenants):
    db = f"shop{d:04d}"
    entries = {}
    for t in range(tables):
        name = f"t{t:03d}"
        failed = random.random() < 0.002
        last = now - datetime.timedelta(minutes=random.choice([5, 20, 50, 300 if random.random() < 0.01 else 40]))
        entries[name] = {
            "table_name": name, "last_sync_time": ts(last), "sync_status": "FAILED" if failed else "SUCCESS",
            "sync_mode": "INCREMENTAL", "records_synced": random.randint(0, 500),
            "error_message": "MySQL: Lost connection to server during query" if failed else None,
            "updated_at": ts(last), "last_success_at": ts(last), "duration_seconds": 0.4,
            "consecutive_failures": 1 if failed else 0,
            "watermark": {"column": "updated_at", "column_type": "datetime", "value": ts(last).replace("T", " ")},
            "key": ["id"],
        }
    doc = {"database_info": {"tenant_id": db, "last_updated": ts(now), "total_tables": tables}, "tables": entries}
    with open(os.path.join(work, "status", f"{db}.json"), "w") as f:
        json.dump(doc, f, indent=2)
with open(os.path.join(work, "status", "history", "runs.jsonl"), "w") as f:
    for r in range(500):
        started = now - datetime.timedelta(minutes=15 * (500 - r))
        tables_run = {f"t{t:03d}": {"rows": random.randint(0, 5000), "seconds": random.random() * 3, "tenants": tenants, "failed": 0} for t in range(tables)}
        f.write(json.dumps({"started_at": ts(started), "seconds": 30.0, "rows": 1, "failed": 0, "tables": tables_run}) + "\n")
dbs = ",".join(f"shop{d:04d}" for d in range(tenants))
json.dump({"db_host": "127.0.0.1", "db_user": "reader", "db_list": dbs, "bq_project": "bench", "bq_dataset": "console",
           "bq_endpoint": "http://127.0.0.1:1", "status_dir": os.path.join(work, "status"),
           "log_file": os.path.join(work, "serve.log")}, open(os.path.join(work, "params.json"), "w"))
PY
chmod -R go-rwx "$WORK"

"$BIN" serve --pipeline "$WORK/params.json" --addr "127.0.0.1:$PORT" -q &
SERVE=$!
trap 'kill $SERVE 2>/dev/null || true; wait $SERVE 2>/dev/null || true' EXIT
for _ in $(seq 1 200); do
  n=$(curl -s "http://127.0.0.1:$PORT/healthz" | python3 -c 'import json,sys; print(json.load(sys.stdin)["tables"])' 2>/dev/null || echo 0)
  [ "$n" = "$((TENANTS * TABLES))" ] && break
  sleep 0.2
done
[ "$n" = "$((TENANTS * TABLES))" ] || die "serve did not load the state ($n tables)"

printf '\n%-34s %10s %10s %10s\n' "page ($TENANTS tenants x $TABLES tables)" "median ms" "worst ms" "KiB"
for path in "/" "/?status=failed" "/?sort=problems&page=13" "/?tenant=shop09" "/table/t025" "/api/state?status=failed" "/healthz"; do
  times=()
  for _ in $(seq 1 20); do
    times+=("$(curl -s -o /dev/null -w '%{time_total}' "http://127.0.0.1:$PORT$path")")
  done
  size=$(curl -s "http://127.0.0.1:$PORT$path" | wc -c)
  printf '%s\n' "${times[@]}" | sort -n | awk -v p="$path" -v s="$size" \
    '{a[NR]=$1} END {printf "%-34s %10.1f %10.1f %10.0f\n", p, a[int((NR+1)/2)]*1000, a[NR]*1000, s/1024}'
done
