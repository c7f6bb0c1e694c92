#!/usr/bin/env bash
# Benchmark binlog CDC (--cdc) on one machine: how fast the stream reads and encodes changes
# against how fast the server can commit them, its memory on one huge transaction, and how long
# a committed change takes to be visible in BigQuery (the local emulator).
#
#   bench/cdc.sh                       # defaults below
#   CDC_TXNS=400000 CDC_BIG_ROWS=2000000 bench/cdc.sh
#
# It starts a private binlog-enabled MariaDB (bench-work/cdc-mariadb, stopped at the end) and an
# emulator, and measures:
#   1. the server's commit rate of single-row transactions: 1 client, then 4 clients at once;
#   2. the stream on a backlog of CDC_TXNS (default 200,000) single-row transactions, decoded and
#      encoded into BigQuery load files that are then discarded (--bench-discard-uploads):
#      events/s, changes/s, the ratio to the best commit rate (the goal is >= 3x), CPU, peak RSS;
#   3. one transaction of CDC_BIG_ROWS (default 1,000,000) rows, same mode: time and peak RSS;
#   4. commit-to-visible latency into the emulator with cdc_flush_seconds 1 and 30: a probe row
#      is committed every CDC_PROBE_EVERY seconds (server clock in the row) while a poller
#      watches the BigQuery table; p50 / p95 / max.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TXNS="${CDC_TXNS:-200000}"
BIG="${CDC_BIG_ROWS:-1000000}"
WORK="$ROOT/bench-work/cdc"
rm -rf "$WORK"
mkdir -p "$WORK"
DB_DIR="$ROOT/bench-work/cdc-mariadb"
PORT=$(bash scripts/private-mariadb.sh start --dir "$DB_DIR" | tail -1)
EMU_PORT="${CDC_BQ_PORT:-9071}"
bash scripts/bq-emulator.sh start --port "$EMU_PORT" --project cdc-bench --fresh >/dev/null
cleanup() {
  bash scripts/private-mariadb.sh stop --dir "$DB_DIR" >/dev/null 2>&1 || true
  bash scripts/bq-emulator.sh stop --port "$EMU_PORT" >/dev/null 2>&1 || true
}
trap cleanup EXIT
cargo build --release -p connector-run 2>&1 | tail -1
BIN="$ROOT/target/release/connector-run"
MYSQL=(mariadb --no-defaults -h127.0.0.1 -P"$PORT" -uroot)

"${MYSQL[@]}" -e "
DROP DATABASE IF EXISTS cdc_bench; CREATE DATABASE cdc_bench CHARACTER SET utf8mb4;
CREATE TABLE cdc_bench.orders (id BIGINT PRIMARY KEY AUTO_INCREMENT, user_id BIGINT NOT NULL, amount DECIMAL(14,4) NOT NULL,
  status VARCHAR(16) NOT NULL, note TEXT, created_at DATETIME(3) NOT NULL);
CREATE TABLE cdc_bench.events (user_id BIGINT, kind VARCHAR(32), at DATETIME(6));
CREATE TABLE cdc_bench.probe (id BIGINT PRIMARY KEY AUTO_INCREMENT, committed_at DATETIME(6) NOT NULL);
DROP DATABASE IF EXISTS cdc_big; CREATE DATABASE cdc_big CHARACTER SET utf8mb4;
CREATE TABLE cdc_big.events (user_id BIGINT, kind VARCHAR(32), at DATETIME(6));"

params() { # params FILE DATASET FLUSH STATUS_DIR [DATABASE]
  cat >"$1" <<JSON
{"db_host": "127.0.0.1", "db_port": "$PORT", "db_user": "root", "db_pass": "", "db_list": "${5:-cdc_bench}",
 "table_list": "orders,events,probe", "bq_project": "cdc-bench", "bq_dataset": "$2",
 "bq_endpoint": "http://127.0.0.1:$EMU_PORT", "cdc_flush_seconds": $3, "batch_size": 5000,
 "status_dir": "$4", "log_file": "$WORK/cdc.log"}
JSON
}

# run_timed NAME COMMAND...: sets ELAPSED, CPU (user+sys s), RSS_MB.
run_timed() {
  local name="$1" user sys rss
  shift
  /usr/bin/time -f "%e %U %S %M" -o "$WORK/time.txt" "$@" >"$WORK/$name.out" 2>&1 || {
    echo "$name failed:"; tail -20 "$WORK/$name.out"; exit 1; }
  read -r ELAPSED user sys rss < <(tail -1 "$WORK/time.txt")
  CPU=$(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.2f", u + s }')
  RSS_MB=$(awk -v m="$rss" 'BEGIN { printf "%.1f", m / 1024 }')
}

echo "==> the server's commit rate (single-row INSERTs, autocommit; innodb_flush_log_at_trx_commit=2)"
N=20000
seq 1 "$N" | awk '{ printf "INSERT INTO cdc_bench.events VALUES (%d, \"commit-rate\", NOW(6));\n", $1 }' >"$WORK/inserts.sql"
t0=$(date +%s.%N)
"${MYSQL[@]}" <"$WORK/inserts.sql"
t1=$(date +%s.%N)
RATE1=$(awk -v n="$N" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", n / (b - a) }')
t0=$(date +%s.%N)
for _ in 1 2 3 4; do "${MYSQL[@]}" <"$WORK/inserts.sql" & done
wait
t1=$(date +%s.%N)
RATE4=$(awk -v n="$((4 * N))" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", n / (b - a) }')
BEST=$(( RATE1 > RATE4 ? RATE1 : RATE4 ))
printf "    1 client:  %8d commits/s\n    4 clients: %8d commits/s\n" "$RATE1" "$RATE4"

echo "==> decode + encode: $TXNS single-row transactions behind the stream, uploads discarded"
params "$WORK/discard.json" cdc_discard 30 "$WORK/status-discard"
# A benchmark run never writes state, so the (empty) tables are snapshotted by a real run first:
# the positions it records are where every discarding run below starts streaming.
"$BIN" --pipeline "$WORK/discard.json" --cdc --catch-up -q >"$WORK/snapshot.out" 2>&1
"${MYSQL[@]}" <<SQL
DELIMITER //
CREATE PROCEDURE cdc_bench.backlog(n INT) BEGIN DECLARE i INT DEFAULT 0;
  WHILE i < n DO
    INSERT INTO cdc_bench.orders (user_id, amount, status, note, created_at)
      VALUES (i % 5000, (i * 7919 % 1000000) / 100, ELT(i % 3 + 1, 'new', 'paid', 'shipped'), CONCAT('note ', i), NOW(3));
    SET i = i + 1;
  END WHILE; END //
DELIMITER ;
CALL cdc_bench.backlog($TXNS);
SQL
run_timed backlog "$BIN" --pipeline "$WORK/discard.json" --cdc --catch-up --bench-discard-uploads -q
EVENTS=$(sed -n 's/.* \([0-9]*\) log events, \([0-9]*\) upserts.*/\1/p' "$WORK/backlog.out")
CHANGES=$(sed -n 's/.* \([0-9]*\) log events, \([0-9]*\) upserts.*/\2/p' "$WORK/backlog.out")
[ "${CHANGES:-0}" -ge "$TXNS" ] || { echo "the stream applied ${CHANGES:-0} changes, expected $TXNS:"; cat "$WORK/backlog.out"; exit 1; }
awk -v e="$EVENTS" -v c="$CHANGES" -v t="$ELAPSED" -v cpu="$CPU" -v rss="$RSS_MB" -v best="$BEST" 'BEGIN {
  printf "    %d events, %d changes in %.2f s: %.0f events/s, %.0f transactions/s (%.1f x the best commit rate), %.2f CPU s, %.1f MB RSS\n",
    e, c, t, e / t, c / t, (c / t) / best, cpu, rss }'

echo "==> one transaction of $BIG rows, uploads discarded"
params "$WORK/big.json" cdc_big 30 "$WORK/status-big" cdc_big
"$BIN" --pipeline "$WORK/big.json" --cdc --catch-up -q --tables events >"$WORK/big-snapshot.out" 2>&1
"${MYSQL[@]}" -e "SET SESSION max_recursive_iterations = 100000000; START TRANSACTION;
INSERT INTO cdc_big.events (user_id, kind, at) WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < $BIG)
SELECT n % 100000, CONCAT('bulk-', n % 97), TIMESTAMP('2024-01-01') + INTERVAL n SECOND FROM s; COMMIT;"
run_timed big "$BIN" --pipeline "$WORK/big.json" --cdc --catch-up --bench-discard-uploads -q --tables events
BIG_CHANGES=$(sed -n 's/.* \([0-9]*\) log events, \([0-9]*\) upserts.*/\2/p' "$WORK/big.out")
[ "${BIG_CHANGES:-0}" -ge "$BIG" ] || { echo "applied ${BIG_CHANGES:-0} of $BIG rows:"; cat "$WORK/big.out"; exit 1; }
awk -v c="$BIG_CHANGES" -v t="$ELAPSED" -v rss="$RSS_MB" 'BEGIN {
  printf "    %d rows in %.2f s (%.0f rows/s), peak RSS %.1f MB\n", c, t, c / t, rss }'

# latency FLUSH SECONDS EVERY: commit-to-visible latency into the emulator.
latency() {
  local flush="$1" seconds="$2" every="$3" dataset="cdc_latency_$1"
  params "$WORK/latency-$flush.json" "$dataset" "$flush" "$WORK/status-latency-$flush"
  "${MYSQL[@]}" -e "TRUNCATE cdc_bench.probe"
  "$BIN" --pipeline "$WORK/latency-$flush.json" --cdc --catch-up -q --tables probe >"$WORK/latency-$flush-snapshot.out" 2>&1
  "$BIN" --pipeline "$WORK/latency-$flush.json" --cdc -q --tables probe >"$WORK/latency-$flush.out" 2>&1 &
  local pid=$!
  sleep 2
  python3 bench/cdc_latency.py --mysql-port "$PORT" --emulator "http://127.0.0.1:$EMU_PORT" --project cdc-bench \
    --dataset "$dataset" --seconds "$seconds" --every "$every" --label "cdc_flush_seconds $flush"
  kill -TERM "$pid"
  wait "$pid" || true
}
echo "==> commit-to-visible latency into the emulator"
latency 1 "${CDC_LATENCY_SECONDS_1:-60}" "${CDC_PROBE_EVERY:-0.5}"
latency 30 "${CDC_LATENCY_SECONDS_30:-180}" "${CDC_PROBE_EVERY_30:-2}"
echo "(outputs in $WORK)"
