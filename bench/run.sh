#!/usr/bin/env bash
# Benchmark connector-run against the server's own ceiling, on one machine.
#
#   bench/run.sh            # 2,000,000 orders in bench_shop1 (half in bench_shop2, a quarter in bench_shop3)
#   BENCH_ROWS=500000 bench/run.sh
#
# Measures on the same data, in one run:
#   1. the ceiling: mariadb-dump --quick of bench_shop1.orders to /dev/null;
#   2. connector-run full sync of bench_shop1.orders through the BigQuery sink's own encoding, the
#      load files discarded (CONNECTOR_BENCH_DISCARD_UPLOADS=1): reading + encoding, no BigQuery;
#   3. the same for bench_shop2.orders (half the rows): peak memory must not grow with the table;
#   4. an incremental run after 1 % of bench_shop1.orders changed (same discard mode);
#   5. end to end into the local emulator, bench_shop3.orders (its own ingest is slow).
# Prints rows/s, MB/s, CPU seconds, peak RSS and the ratio to the ceiling.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
ROWS="${BENCH_ROWS:-2000000}"
PORT="${BENCH_BQ_PORT:-9070}"
WORK="$ROOT/bench-work"
MYSQL=(mariadb -h127.0.0.1 -P"${MYSQL_PORT:-3306}" -uroot)
mkdir -p "$WORK"

bash scripts/mariadb.sh ensure >/dev/null
bash scripts/bq-emulator.sh start --port "$PORT" --project bench-project --fresh >/dev/null
cargo build --release -p connector-run 2>&1 | tail -1
BIN="$ROOT/target/release/connector-run"

echo "==> data: $ROWS orders in bench_shop1, $((ROWS / 2)) in bench_shop2, $((ROWS / 4)) in bench_shop3"
t0=$SECONDS
for i in 1 2 3; do
  n=$((ROWS / (1 << (i - 1))))
  db="bench_shop$i"
  "${MYSQL[@]}" -e "
DROP DATABASE IF EXISTS $db; CREATE DATABASE $db CHARACTER SET utf8mb4;
CREATE TABLE $db.orders (id BIGINT PRIMARY KEY, user_id BIGINT NOT NULL, amount DECIMAL(14,4) NOT NULL,
  status VARCHAR(16) NOT NULL, note TEXT, attributes JSON, created_at DATETIME(3) NOT NULL,
  updated_at DATETIME(3) NOT NULL, KEY (updated_at));
CREATE TABLE $db.users (id BIGINT PRIMARY KEY, email VARCHAR(190) NOT NULL, name VARCHAR(100), balance DECIMAL(12,2),
  created_at DATETIME(3) NOT NULL, updated_at DATETIME(3) NOT NULL);
CREATE TABLE $db.products (sku VARCHAR(32) PRIMARY KEY, title TEXT, price DECIMAL(10,2), update_time DATETIME(3));
CREATE TABLE $db.page_views (user_id BIGINT, path VARCHAR(255), viewed_at DATETIME(3));
INSERT INTO $db.orders SELECT seq, seq % 50000, (seq * 7919 % 10000000) / 10000, ELT(seq % 4 + 1, 'new', 'paid', 'shipped', 'cancelled'),
  IF(seq % 5 = 0, NULL, CONCAT('note for order ', seq, ' — ünïcödé text')),
  JSON_OBJECT('n', seq, 'tags', JSON_ARRAY('a', seq % 7), 'gift', seq % 2 = 0),
  TIMESTAMP('2024-01-01') + INTERVAL seq SECOND, TIMESTAMP('2024-06-01') + INTERVAL seq SECOND
  FROM test.seq_1_to_$n;
INSERT INTO $db.users SELECT seq, CONCAT('user', seq, '@example.com'), CONCAT('User ', seq), CAST(seq AS SIGNED) % 1000 - 100,
  TIMESTAMP('2023-01-01') + INTERVAL seq MINUTE, TIMESTAMP('2024-01-01') + INTERVAL seq MINUTE FROM test.seq_1_to_$((n / 20 + 1));
INSERT INTO $db.products SELECT CONCAT('SKU-', seq), CONCAT('Product ', seq), seq % 500 + 0.99, NOW(3) FROM test.seq_1_to_$((n / 100 + 1));
INSERT INTO $db.page_views SELECT seq % 50000, CONCAT('/p/', seq % 1000), TIMESTAMP('2024-05-01') + INTERVAL seq SECOND FROM test.seq_1_to_$((n / 10 + 1));"
done
echo "    loaded in $((SECONDS - t0)) s"

cat > "$WORK/params.json" <<JSON
{"db_host": "127.0.0.1", "db_port": "${MYSQL_PORT:-3306}", "db_user": "root", "db_pass": "",
 "db_list": "bench_shop1,bench_shop2,bench_shop3", "table_list": "orders,users,products,page_views",
 "bq_project": "bench-project", "bq_dataset": "bench", "bq_endpoint": "http://127.0.0.1:$PORT",
 "batch_size": 5000, "pool_size": 3, "status_dir": "$WORK/status", "log_file": "$WORK/sync.log"}
JSON
rm -rf "$WORK/status"

# measure NAME ROWS COMMAND...: prints one result line; keeps elapsed seconds in $ELAPSED
measure() {
  local name="$1" rows="$2"
  shift 2
  /usr/bin/time -f "%e %U %S %M" -o "$WORK/time.txt" "$@" >"$WORK/$name.out" 2>&1 || {
    echo "$name failed:"; tail -20 "$WORK/$name.out"; exit 1; }
  read -r ELAPSED user sys rss_kb <"$WORK/time.txt"
  local mb
  mb=$(awk -v r="$rows" -v b="$BYTES_PER_ROW" 'BEGIN { printf "%.1f", r * b / 1e6 }')
  awk -v n="$name" -v r="$rows" -v e="$ELAPSED" -v u="$user" -v s="$sys" -v m="$rss_kb" -v mb="$mb" -v c="${CEILING:-0}" 'BEGIN {
    rate = (e > 0) ? r / e : 0
    printf "%-34s %10d rows %8.2f s %11.0f rows/s %8.1f MB/s %7.2f CPU s %7.1f MB RSS", n, r, e, rate, (e > 0 ? mb / e : 0), u + s, m / 1024
    if (c > 0) printf "   %.2f x ceiling", rate / c
    printf "\n" }'
  LAST_RATE=$(awk -v r="$rows" -v e="$ELAPSED" 'BEGIN { printf "%.0f", (e > 0) ? r / e : 0 }')
}

# Average size of an orders row as JSON lines, for MB/s.
BYTES_PER_ROW=$("${MYSQL[@]}" -N -e "SELECT AVG(LENGTH(JSON_OBJECT('id', id, 'user_id', user_id, 'amount', amount, 'status', status, 'note', note, 'attributes', attributes, 'created_at', created_at, 'updated_at', updated_at))) FROM bench_shop1.orders")
N1=$ROWS
N2=$((ROWS / 2))
N3=$((ROWS / 4))
echo "==> results ($(nproc) cores shared by MariaDB and the tool)"
CEILING=0
measure "mariadb-dump --quick (ceiling)" "$N1" mariadb-dump -h127.0.0.1 -uroot --quick --single-transaction bench_shop1 orders --result-file=/dev/null
CEILING=$LAST_RATE
FULL_TIME=0
export CONNECTOR_BENCH_DISCARD_UPLOADS=1
measure "connector-run full, encode only" "$N1" "$BIN" --pipeline "$WORK/params.json" --full -q --databases bench_shop1 --tables orders
FULL_TIME=$ELAPSED
measure "connector-run full, half the rows" "$N2" "$BIN" --pipeline "$WORK/params.json" --full -q --databases bench_shop2 --tables orders
CHANGED=$((N1 / 100))
"${MYSQL[@]}" -e "UPDATE bench_shop1.orders SET amount = amount + 1, updated_at = NOW(3) WHERE id % 100 = 7"
measure "incremental after 1 % changed" "$CHANGED" "$BIN" --pipeline "$WORK/params.json" -q --databases bench_shop1 --tables orders
awk -v i="$ELAPSED" -v f="$FULL_TIME" 'BEGIN { printf "    incremental / full time: %.1f %%\n", 100 * i / f }'
unset CONNECTOR_BENCH_DISCARD_UPLOADS
CEILING=0
measure "end to end into the emulator" "$N3" "$BIN" --pipeline "$WORK/params.json" --full -q --databases bench_shop3 --tables orders
echo "(logs and outputs in $WORK)"
