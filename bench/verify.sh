#!/usr/bin/env bash
# Benchmark `verify` against a full sync of the same table, on one machine, in one run.
#
#   bench/verify.sh                    # 2,000,000 orders
#   VERIFY_ROWS=500000 bench/verify.sh
#
# It starts a private MariaDB (bench-work/verify-mariadb, stopped at the end) and an emulator,
# creates bench_verify.orders (the same rows as bench/run.sh, with a JSON column) and
# bench_verify.orders_flat (the same without it), and for each table measures:
#   1. a full sync into the emulator (end to end), and encode-only (--bench-discard-uploads);
#   2. verify of the synced table, then verify --keys-only;
# each with its wall time and the bytes MySQL sent (the server's Bytes_sent counter).
# Prints the ratios the targets in docs/performance.md are about.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
NAME=bench-verify
source scripts/lib.sh
ROWS="${VERIFY_ROWS:-2000000}"
WORK="$ROOT/bench-work/verify"
rm -rf "$WORK"
mkdir -p "$WORK"
DB_DIR="$ROOT/bench-work/verify-mariadb"
PORT=$(bash scripts/private-mariadb.sh start --dir "$DB_DIR" --no-binlog | tail -1)
EMU_PORT="${VERIFY_BQ_PORT:-9072}"
bash scripts/bq-emulator.sh start --port "$EMU_PORT" --project verify-bench --fresh >/dev/null
cleanup() {
  bash scripts/private-mariadb.sh stop --dir "$DB_DIR" >/dev/null 2>&1 || true
  bash scripts/bq-emulator.sh stop --port "$EMU_PORT" >/dev/null 2>&1 || true
}
trap cleanup EXIT
cargo build --release -p connector-run 2>&1 | tail -1
BIN="$ROOT/target/release/connector-run"
MYSQL=(mariadb --no-defaults -h127.0.0.1 -P"$PORT" -uroot -N -B)

echo "==> data: $ROWS rows in bench_verify.orders and bench_verify.orders_flat"
"${MYSQL[@]}" -e "
SET GLOBAL innodb_buffer_pool_size = $((1 << 30));
DROP DATABASE IF EXISTS bench_verify; CREATE DATABASE bench_verify CHARACTER SET utf8mb4;
CREATE TABLE bench_verify.orders (id BIGINT PRIMARY KEY, user_id BIGINT NOT NULL, amount DECIMAL(14,4) NOT NULL,
  status VARCHAR(16) NOT NULL, note TEXT, attributes JSON, created_at DATETIME(3) NOT NULL,
  updated_at DATETIME(3) NOT NULL, KEY (updated_at));
INSERT INTO bench_verify.orders SELECT seq, seq % 50000, (seq * 7919 % 10000000) / 10000,
  ELT(seq % 4 + 1, 'new', 'paid', 'shipped', 'cancelled'), IF(seq % 5 = 0, NULL, CONCAT('note for order ', seq, ' — ünïcödé text')),
  JSON_OBJECT('n', seq, 'tags', JSON_ARRAY('a', seq % 7), 'gift', seq % 2 = 0),
  TIMESTAMP('2024-01-01') + INTERVAL seq SECOND, TIMESTAMP('2024-06-01') + INTERVAL seq SECOND FROM bench_verify.seq_1_to_$ROWS;
CREATE TABLE bench_verify.orders_flat LIKE bench_verify.orders;
ALTER TABLE bench_verify.orders_flat DROP COLUMN attributes;
INSERT INTO bench_verify.orders_flat SELECT id, user_id, amount, status, note, created_at, updated_at FROM bench_verify.orders;
ANALYZE TABLE bench_verify.orders, bench_verify.orders_flat;" >/dev/null

cat >"$WORK/params.json" <<JSON
{"db_host": "127.0.0.1", "db_port": "$PORT", "db_user": "root", "db_pass": "", "db_list": "bench_verify",
 "table_list": "orders,orders_flat", "bq_project": "verify-bench", "bq_dataset": "bench", "bq_endpoint": "http://127.0.0.1:$EMU_PORT",
 "batch_size": 5000, "pool_size": 1, "status_dir": "$WORK/status", "log_file": "$WORK/run.log"}
JSON

sent() { "${MYSQL[@]}" -e "SHOW GLOBAL STATUS LIKE 'Bytes_sent'" | cut -f2; }
# timed NAME COMMAND...: sets SECS and BYTES (what MySQL sent meanwhile).
timed() {
  local name="$1" b0 t0 t1
  shift
  b0=$(sent)
  t0=$(date +%s.%N)
  "$@" >"$WORK/$name.out" 2>&1 || { rc=$?; [ "$rc" = 1 ] || { echo "$name failed ($rc):"; tail -20 "$WORK/$name.out"; exit 1; }; }
  t1=$(date +%s.%N)
  SECS=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
  BYTES=$(( $(sent) - b0 ))
}
pct() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f %%", 100 * a / b }'; }
for table in orders_flat orders; do
  echo "==> $table"
  timed "$table-encode" "$BIN" --pipeline "$WORK/params.json" --tables "$table" --full --bench-discard-uploads -q
  ENC_S=$SECS
  timed "$table-full" "$BIN" --pipeline "$WORK/params.json" --tables "$table" --full -q
  FULL_S=$SECS FULL_B=$BYTES
  timed "$table-verify" "$BIN" verify --pipeline "$WORK/params.json" --tables "$table" -q
  grep -q "EQUAL" "$WORK/$table-verify.out" || { echo "verify did not find the table equal:"; cat "$WORK/$table-verify.out"; exit 1; }
  V_S=$SECS V_B=$BYTES
  timed "$table-keys" "$BIN" verify --pipeline "$WORK/params.json" --tables "$table" --keys-only -q
  K_S=$SECS K_B=$BYTES
  printf "    full sync end to end  %8.2f s   MySQL sent %12d bytes   (encode only %.2f s)\n" "$FULL_S" "$FULL_B" "$ENC_S"
  printf "    verify                %8.2f s   MySQL sent %12d bytes   = %s of the sync's time, %s of its bytes\n" \
    "$V_S" "$V_B" "$(pct "$V_S" "$FULL_S")" "$(pct "$V_B" "$FULL_B")"
  printf "    verify --keys-only    %8.2f s   MySQL sent %12d bytes   = %s of the sync's time, %s of its bytes\n" \
    "$K_S" "$K_B" "$(pct "$K_S" "$FULL_S")" "$(pct "$K_B" "$FULL_B")"
done
echo "(outputs in $WORK)"
