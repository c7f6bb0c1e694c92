#!/usr/bin/env bash
# Benchmark the postgres source against PostgreSQL's own ceiling, on one machine, in one run.
#
#   bench/postgres.sh                        # 2,000,000 orders in bench_pg1, half in bench_pg2
#   BENCH_ROWS=500000 BENCH_REPEAT=5 bench/postgres.sh
#
# A private PostgreSQL (scripts/private-postgres.sh, no TLS, its own port and data dir under
# bench-work/postgres; removed at the end) holds the same orders table as bench/run.sh's. On it:
#   1. the ceiling: psql's \copy (SELECT * FROM orders) TO '/dev/null' (COPY text, one connection);
#   2. connector-run full sync of bench_pg1.orders through the BigQuery sink's own encoding into
#      load chunks, the chunks discarded (--bench-discard-uploads: no upload, no state);
#      1 and 2 alternate BENCH_REPEAT times (default 3) and the medians are compared;
#   3. the same for bench_pg2.orders (half the rows): peak memory must not grow with the table.
# Prints rows/s, MB/s, CPU seconds (the tool's; the server's beside it: its backends' CPU, reaped
# by the postmaster, read after a pause that lets it reap the last backend), peak RSS, and the
# ratio to the ceiling.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
NAME=bench-postgres source scripts/lib.sh
source bench/lib.sh
ROWS="${BENCH_ROWS:-2000000}"
REPEAT="${BENCH_REPEAT:-3}"
WORK="$ROOT/bench-work/postgres"
mkdir -p "$WORK"
PG_PORT="$(bash scripts/private-postgres.sh start --dir "$WORK/server" --no-tls)"
cleanup() {
  bash scripts/private-postgres.sh stop --dir "$WORK/server" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
cargo build --release -p connector-run 2>&1 | tail -1
BIN="$ROOT/target/release/connector-run"
CONN="host=127.0.0.1 port=$PG_PORT user=postgres sslmode=disable"
psql_in() { local db="$1"; shift; psql "$CONN dbname=$db" -v ON_ERROR_STOP=1 -q "$@"; }

echo "==> data: $ROWS orders in bench_pg1, $((ROWS / 2)) in bench_pg2"
t0=$SECONDS
for i in 1 2; do
  n=$((ROWS / i))
  db="bench_pg$i"
  psql_in postgres -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
  psql_in "$db" <<SQL
CREATE TABLE orders (id bigint PRIMARY KEY, user_id bigint NOT NULL, amount numeric(14,4) NOT NULL,
  status varchar(16) NOT NULL, note text, attributes jsonb, created_at timestamp(3) NOT NULL,
  updated_at timestamp(3) NOT NULL);
INSERT INTO orders SELECT g, g % 50000, (g::bigint * 7919 % 10000000) / 10000.0, (ARRAY['new','paid','shipped','cancelled'])[g % 4 + 1],
  CASE WHEN g % 5 = 0 THEN NULL ELSE 'note for order ' || g || ' — ünïcödé text' END,
  jsonb_build_object('n', g, 'tags', jsonb_build_array('a', g % 7), 'gift', g % 2 = 0),
  '2024-01-01'::timestamp + g * interval '1 second', '2024-06-01'::timestamp + g * interval '1 second'
  FROM generate_series(1, $n) g;
CREATE INDEX ON orders (updated_at);
VACUUM ANALYZE orders;
SQL
done
echo "    loaded in $((SECONDS - t0)) s"

cat >"$WORK/params.json" <<JSON
{"source": {"kind": "postgres", "host": "127.0.0.1", "port": $PG_PORT, "user": "postgres", "ssl_mode": "disable",
            "databases": ["bench_pg1", "bench_pg2"], "pool_size": 3},
 "sinks": [{"kind": "bigquery", "project": "bench-project", "dataset": "bench", "endpoint": "http://127.0.0.1:9"}],
 "state": {"kind": "json", "status_dir": "$WORK/status"},
 "tables": ["orders"], "batch_size": 5000, "log_file": "$WORK/sync.log"}
JSON

SERVER_RUN="$WORK/server"
[ -f "$WORK/server/rundir" ] && SERVER_RUN="$(cat "$WORK/server/rundir")"
PM_PID="$(head -1 "$SERVER_RUN/data/postmaster.pid")"
# server_cpu: the postmaster's CPU and that of the backends it has reaped (each connection is a
# process of its own, gone when the client disconnects).
server_cpu() {
  sleep 0.3
  awk -v hz="$(getconf CLK_TCK)" '{ print ($14 + $15 + $16 + $17) / hz }' "/proc/$PM_PID/stat"
}
BYTES_PER_ROW=$(psql_in bench_pg1 -Atc "SELECT avg(length(row_to_json(o)::text)) FROM orders o")
N1=$ROWS
N2=$((ROWS / 2))
CEIL=(psql "$CONN dbname=bench_pg1" -q -c "\\copy (SELECT * FROM orders) TO '/dev/null'")
FULL=("$BIN" --pipeline "$WORK/params.json" --bench-discard-uploads --full -q --tables orders)

echo "==> full sync vs the ceiling: $REPEAT alternating runs each, medians ($(nproc) cores shared by PostgreSQL and the tool)"
"${CEIL[@]}" # warms the cache: every run below reads from memory
: >"$WORK/ceiling.txt"
: >"$WORK/full.txt"
for i in $(seq "$REPEAT"); do
  run_timed ceiling "${CEIL[@]}"
  echo "$ELAPSED $CPU $SERVER $RSS_MB" >>"$WORK/ceiling.txt"
  run_timed full "${FULL[@]}" --databases bench_pg1
  echo "$ELAPSED $CPU $SERVER $RSS_MB" >>"$WORK/full.txt"
  echo "    run $i: psql \\copy $(tail -1 "$WORK/ceiling.txt" | cut -d' ' -f1) s, connector-run $ELAPSED s"
done
CEILING=$(awk -v r="$N1" -v e="$(med "$WORK/ceiling.txt" 1)" 'BEGIN { printf "%.0f", r / e }')
line "psql copy to /dev/null (ceiling)" "$N1" "$(med "$WORK/ceiling.txt" 1)" "$(med "$WORK/ceiling.txt" 2)" "$(med "$WORK/ceiling.txt" 3)" "$(med "$WORK/ceiling.txt" 4)"
line "connector-run full, encode only" "$N1" "$(med "$WORK/full.txt" 1)" "$(med "$WORK/full.txt" 2)" "$(med "$WORK/full.txt" 3)" "$(med "$WORK/full.txt" 4)" "$CEILING"
RSS_FULL=$(med "$WORK/full.txt" 4)
: >"$WORK/half.txt"
for i in $(seq "$REPEAT"); do
  run_timed half "${FULL[@]}" --databases bench_pg2
  echo "$ELAPSED $CPU $SERVER $RSS_MB" >>"$WORK/half.txt"
done
line "connector-run full, half the rows" "$N2" "$(med "$WORK/half.txt" 1)" "$(med "$WORK/half.txt" 2)" "$(med "$WORK/half.txt" 3)" "$(med "$WORK/half.txt" 4)" "$CEILING"
RSS_HALF=$(med "$WORK/half.txt" 4)
awk -v a="$RSS_FULL" -v b="$RSS_HALF" 'BEGIN { printf "    peak RSS at 2x the rows: %.1f MB vs %.1f MB (%+.1f %%)\n", a, b, 100 * (a - b) / b }'
