#!/usr/bin/env bash
# Benchmark connector-run against the server's own ceiling, on one machine, in one run.
#
#   bench/run.sh                 # 2,000,000 orders in bench_shop1 (half in bench_shop2, a quarter in bench_shop3)
#   bench/run.sh --peers         # also Sling and ConnectorX from PyPI on the same table (bench/peers.sh);
#                                # ConnectorX into Arrow also takes a turn in step 2's alternation
#   BENCH_ROWS=500000 BENCH_REPEAT=5 bench/run.sh
#   BENCH_FULL_ONLY=1 bench/run.sh  # steps 1 to 3 only, and the peers with --peers (no emulator runs)
#   BENCH_COMPARE_BIN=/path/to/connector-run bench/run.sh  # step 2 also with another build
#   BENCH_KEEP_DATA=1 bench/run.sh  # the bench databases stay afterwards (for a profiler)
#
# On the same data it measures:
#   1. the ceiling: mariadb-dump --quick of bench_shop1.orders to /dev/null;
#   2. connector-run full sync of bench_shop1.orders through the BigQuery sink's own encoding into
#      load chunks, the chunks discarded (--bench-discard-uploads: no BigQuery upload, no state),
#      its key space in segments read side by side (range_readers 2, the default), and the same
#      with its key ranges read one after another (range_readers 1); these alternate with 1
#      BENCH_REPEAT times (default 3) and the medians are compared, so that a noisy neighbour on
#      the shared cores hits all alike;
#   3. the same for bench_shop2.orders (half the rows), ranges one after another, beside the full
#      table read the same way: peak memory must not grow with the table;
#   4. end to end into the local emulator: every tenant x every table, a full sync (which also
#      records the watermarks the next step reads from), with its BigQuery jobs counted per target
#      table (the emulator's own ingest is slow: reported separately);
#   5. an incremental run of bench_shop1.orders after 1 % of every tenant's orders changed (same
#      discard mode, after one recorded run that moves the watermark to the change: the timed
#      runs record nothing, so every repeat reads the same window), beside the bare
#      incremental SELECT in the mariadb client (the server's own share of that cost);
#   6. the same incremental change end to end into the emulator, every tenant and table, with
#      its jobs.
# Prints rows/s, MB/s, CPU seconds (the tool's; the server's beside it), peak RSS, the ratio to
# the ceiling, and the jobs.
#
# The MariaDB buffer pool is raised to hold the tables (2 GiB, as a server sized for its data
# would have; restored at the end): with the default 128 MiB a 1 % incremental read of rows spread
# over a 300 MB table reads nearly every page from disk, which measures the disk, not the tool.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
NAME=bench source scripts/lib.sh
source bench/lib.sh
PEERS=0
for arg in "$@"; do
  case "$arg" in
    --peers) PEERS=1 ;;
    *) echo "usage: bench/run.sh [--peers]" >&2; exit 2 ;;
  esac
done
ROWS="${BENCH_ROWS:-2000000}"
REPEAT="${BENCH_REPEAT:-3}"
PORT="${BENCH_BQ_PORT:-9070}"
MYSQL_PORT="${MYSQL_PORT:-3306}"
WORK="$ROOT/bench-work"
MYSQL=(mariadb -h127.0.0.1 -P"$MYSQL_PORT" -uroot)
mkdir -p "$WORK"

bash scripts/mariadb.sh ensure >/dev/null
bash scripts/bq-emulator.sh start --port "$PORT" --project bench-project --fresh >/dev/null
cargo build --release -p connector-run 2>&1 | tail -1
BIN="$ROOT/target/release/connector-run"

POOL_BEFORE=$("${MYSQL[@]}" -N -e "SELECT @@innodb_buffer_pool_size")
cleanup() {
  "${MYSQL[@]}" -e "SET GLOBAL innodb_buffer_pool_size = $POOL_BEFORE" 2>/dev/null || true
  if [ "${BENCH_KEEP_DATA:-0}" != 1 ]; then
    "${MYSQL[@]}" -e "DROP DATABASE IF EXISTS bench_shop1; DROP DATABASE IF EXISTS bench_shop2; DROP DATABASE IF EXISTS bench_shop3" 2>/dev/null || true
  fi
  bash scripts/bq-emulator.sh stop --port "$PORT" >/dev/null 2>&1 || true
}
trap cleanup EXIT
if [ "$POOL_BEFORE" -lt $((2 << 30)) ]; then
  "${MYSQL[@]}" -e "SET GLOBAL innodb_buffer_pool_size = $((2 << 30))"
fi

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

cat >"$WORK/params.json" <<JSON
{"db_host": "127.0.0.1", "db_port": "$MYSQL_PORT", "db_user": "root", "db_pass": "",
 "db_list": "bench_shop1,bench_shop2,bench_shop3", "table_list": "orders,users,products,page_views",
 "bq_project": "bench-project", "bq_dataset": "bench", "bq_endpoint": "http://127.0.0.1:$PORT",
 "batch_size": 5000, "pool_size": 3, "status_dir": "$WORK/status", "log_file": "$WORK/sync.log"}
JSON
# The same with the key ranges of a big table read one after another (range_readers 1), to
# compare with the default: segments of the key space read side by side on two connections.
sed 's/"batch_size": 5000,/"batch_size": 5000, "range_readers": 1,/' "$WORK/params.json" >"$WORK/params-sequential.json"
rm -rf "$WORK/status" "$WORK/sync.log"

# The server on MYSQL_PORT (its pid file), not any mariadbd: a private one may run beside it.
SERVER_PID=$(cat "$("${MYSQL[@]}" -N -e "SELECT @@pid_file")" 2>/dev/null || pidof -s mariadbd || true)
# server_cpu: the server's CPU seconds so far (0 when its pid is unknown).
server_cpu() { process_cpu "$SERVER_PID"; }

# Average size of an orders row as JSON lines, for MB/s.
BYTES_PER_ROW=$("${MYSQL[@]}" -N -e "SELECT AVG(LENGTH(JSON_OBJECT('id', id, 'user_id', user_id, 'amount', amount, 'status', status, 'note', note, 'attributes', attributes, 'created_at', created_at, 'updated_at', updated_at))) FROM bench_shop1.orders")
N1=$ROWS
N2=$((ROWS / 2))
DUMP=(mariadb-dump -h127.0.0.1 -P"$MYSQL_PORT" -uroot --quick --single-transaction bench_shop1 orders --result-file=/dev/null)
FULL=("$BIN" --pipeline "$WORK/params.json" --bench-discard-uploads --full -q --tables orders --report-json "$WORK/full-report.json")
SEQUENTIAL=("$BIN" --pipeline "$WORK/params-sequential.json" --bench-discard-uploads --full -q --tables orders)
COMPARE_BIN="${BENCH_COMPARE_BIN:-}"
# With --peers, ConnectorX into Arrow (the CPU-per-row yardstick) takes its turn in the same
# alternation, so that a slower or faster hour of the shared cores hits both alike.
CONNECTORX=()
if [ "$PEERS" = 1 ]; then
  # Its last line is the python; on a failed install, what it printed says why.
  PEERS_PY=$(WORK="$WORK" MYSQL_PORT="$MYSQL_PORT" PEERS_INSTALL_ONLY=1 bash bench/peers.sh) || { echo "$PEERS_PY"; exit 1; }
  PEERS_PY=$(tail -1 <<<"$PEERS_PY")
  CONNECTORX=("$PEERS_PY" bench/peers_connectorx.py arrow "mysql://root@127.0.0.1:$MYSQL_PORT/bench_shop1" "SELECT * FROM bench_shop1.orders")
fi

echo "==> full sync vs the ceiling: $REPEAT alternating runs each, medians ($(nproc) cores shared by MariaDB and the tool)"
"${DUMP[@]}" # warms the buffer pool: every run below reads from memory
: >"$WORK/ceiling.txt"
: >"$WORK/full.txt"
: >"$WORK/sequential.txt"
: >"$WORK/compare.txt"
: >"$WORK/connectorx.txt"
for i in $(seq "$REPEAT"); do
  if [ "${#CONNECTORX[@]}" -gt 0 ]; then
    run_timed connectorx "${CONNECTORX[@]}"
    [ "$(tail -1 "$WORK/connectorx.out")" = "$N1" ] || { echo "ConnectorX read $(tail -1 "$WORK/connectorx.out") rows, not $N1"; exit 1; }
    echo "$ELAPSED $CPU $SERVER $RSS_MB" >>"$WORK/connectorx.txt"
  fi
  if [ -n "$COMPARE_BIN" ]; then
    run_timed compare "$COMPARE_BIN" "${FULL[@]:1}" --databases bench_shop1
    echo "$ELAPSED $CPU $SERVER $RSS_MB" >>"$WORK/compare.txt"
  fi
  run_timed ceiling "${DUMP[@]}"
  echo "$ELAPSED $CPU $SERVER $RSS_MB" >>"$WORK/ceiling.txt"
  run_timed sequential "${SEQUENTIAL[@]}" --databases bench_shop1
  echo "$ELAPSED $CPU $SERVER $RSS_MB" >>"$WORK/sequential.txt"
  run_timed full "${FULL[@]}" --databases bench_shop1
  echo "$ELAPSED $CPU $SERVER $RSS_MB" >>"$WORK/full.txt"
  grep -q "segments read at once" "$WORK/full-report.json" || {
    echo "the full sync did not read segments side by side:"; cat "$WORK/full-report.json"; exit 1; }
  echo "    run $i: mariadb-dump $(tail -1 "$WORK/ceiling.txt" | cut -d' ' -f1) s, connector-run $ELAPSED s ($(tail -1 "$WORK/sequential.txt" | cut -d' ' -f1) s with ranges one after another)"
done
CEILING=$(awk -v r="$N1" -v e="$(med "$WORK/ceiling.txt" 1)" 'BEGIN { printf "%.0f", r / e }')
line "mariadb-dump --quick (ceiling)" "$N1" "$(med "$WORK/ceiling.txt" 1)" "$(med "$WORK/ceiling.txt" 2)" "$(med "$WORK/ceiling.txt" 3)" "$(med "$WORK/ceiling.txt" 4)"
line "connector-run full, ranges one after another" "$N1" "$(med "$WORK/sequential.txt" 1)" "$(med "$WORK/sequential.txt" 2)" "$(med "$WORK/sequential.txt" 3)" "$(med "$WORK/sequential.txt" 4)" "$CEILING"
FULL_TIME=$(med "$WORK/full.txt" 1)
line "connector-run full, encode only" "$N1" "$FULL_TIME" "$(med "$WORK/full.txt" 2)" "$(med "$WORK/full.txt" 3)" "$(med "$WORK/full.txt" 4)" "$CEILING"
if [ "${#CONNECTORX[@]}" -gt 0 ]; then
  line "connectorx -> arrow (in the alternation)" "$N1" "$(med "$WORK/connectorx.txt" 1)" "$(med "$WORK/connectorx.txt" 2)" "$(med "$WORK/connectorx.txt" 3)" "$(med "$WORK/connectorx.txt" 4)" "$CEILING"
  # The interpreter's start and imports are in ConnectorX's figure as the tool's start is in its own.
  run_timed connectorx-imports "$PEERS_PY" -c "import connectorx, pyarrow"
  # Pair by pair (each repeat's runs were next to each other), then the median of the ratios.
  ratio() { paste -d' ' "$1" "$WORK/connectorx.txt" | awk '{ print $2 / $6 }' | median; }
  printf "    tool CPU / ConnectorX CPU, median of %d pairs: %.2f one after another, %.2f in segments (Python and its imports alone: %s CPU s)\n" \
    "$REPEAT" "$(ratio "$WORK/sequential.txt")" "$(ratio "$WORK/full.txt")" "$CPU"
fi
if [ -n "$COMPARE_BIN" ]; then
  line "BENCH_COMPARE_BIN, encode only" "$N1" "$(med "$WORK/compare.txt" 1)" "$(med "$WORK/compare.txt" 2)" "$(med "$WORK/compare.txt" 3)" "$(med "$WORK/compare.txt" 4)" "$CEILING"
fi

# Half the rows, ranges one after another: whether a table of about chunk_rows rows is split
# depends on the server's estimate of its rows, so memory at 2x the rows is compared like for
# like, against the full table read the same way.
: >"$WORK/half.txt"
for i in $(seq "$REPEAT"); do
  run_timed half "${SEQUENTIAL[@]}" --databases bench_shop2
  echo "$ELAPSED $CPU $SERVER $RSS_MB" >>"$WORK/half.txt"
done
line "the same one after another, half the rows" "$N2" "$(med "$WORK/half.txt" 1)" "$(med "$WORK/half.txt" 2)" "$(med "$WORK/half.txt" 3)" "$(med "$WORK/half.txt" 4)" "$CEILING"
RSS_HALF=$(med "$WORK/half.txt" 4)
awk -v a="$(med "$WORK/sequential.txt" 4)" -v b="$RSS_HALF" 'BEGIN { printf "    peak RSS at 2x the rows (ranges one after another): %.1f MB vs %.1f MB (%+.1f %%)\n", a, b, 100 * (a - b) / b }'
# The peers read the same table right after, on the same machine state.
if [ "$PEERS" = 1 ]; then
  echo "==> peers on bench_shop1.orders"
  PEERS_ROWS="$N1" BYTES_PER_ROW="$BYTES_PER_ROW" CEILING="$CEILING" WORK="$WORK" MYSQL_PORT="$MYSQL_PORT" \
    bash bench/peers.sh
fi
if [ "${BENCH_FULL_ONLY:-0}" = 1 ]; then
  echo "(BENCH_FULL_ONLY=1: no end-to-end or incremental runs; logs and outputs in $WORK)"
  exit 0
fi


# jobs RUN_ID: the BigQuery jobs of one run, per target table (from the emulator's job list).
jobs() {
  python3 - "http://127.0.0.1:$PORT/bigquery/v2/projects/bench-project/jobs" "$1" <<'PY'
import collections, json, re, sys, urllib.request
url, run_id = sys.argv[1], sys.argv[2]
jobs, token = [], None
while True:
    with urllib.request.urlopen(url + "?maxResults=1000" + (f"&pageToken={token}" if token else "")) as r:
        page = json.load(r)
    jobs += page.get("jobs", [])
    token = page.get("nextPageToken")
    if not token:
        break
jobs = [j for j in jobs if run_id in j["id"]]
merges = {}  # target table -> (merge jobs, staging tables it reads)
loads = collections.Counter()  # staging table -> load jobs
for j in jobs:
    conf = j["configuration"]
    if "load" in conf:
        loads[conf["load"]["destinationTable"]["tableId"]] += 1
    elif conf.get("query", {}).get("query", "").startswith("MERGE"):
        q = conf["query"]["query"]
        target = re.match(r"MERGE `[^`]*\.([^.`]+)`", q).group(1)
        n, staging = merges.get(target, (0, set()))
        merges[target] = (n + 1, staging | set(re.findall(r"\.(_stage_[A-Za-z0-9_]+)`", q)))
total = 0
for target, (n, staging) in sorted(merges.items()):
    k = sum(loads[s] for s in staging)
    total += n + k
    print(f"    {target:<12} {len(staging)} staging table(s), {k:3d} load job(s), {n} MERGE")
print(f"    {total} jobs for {len(merges)} target tables")
PY
}
run_id() { grep -o 'run_id="[^"]*"' "$WORK/sync.log" | tail -1 | cut -d'"' -f2; }
# rows_synced FILE: the row total of a run's report.
rows_synced() { sed -n 's/^total: .*, \([0-9]*\) rows in .*/\1/p' "$1"; }

echo "==> end to end into the local emulator: 3 tenants x 4 tables"
run_timed e2e-full "$BIN" --pipeline "$WORK/params.json" --full -q
ROWS_SYNCED=$(rows_synced "$WORK/e2e-full.out")
BYTES_PER_ROW=0 line "full sync, every tenant and table" "${ROWS_SYNCED:-0}" "$ELAPSED" "$CPU" "$SERVER" "$RSS_MB"
jobs "$(run_id)"
echo "==> incremental after 1 % of every tenant's orders changed (bench_shop1.orders timed)"
CHANGED=$((N1 / 100))
for i in 1 2 3; do
  "${MYSQL[@]}" -e "UPDATE bench_shop$i.orders SET amount = amount + 1, updated_at = NOW(3) WHERE id % 100 = 7"
done
INCREMENTAL=("$BIN" --pipeline "$WORK/params.json" --bench-discard-uploads -q --databases bench_shop1 --tables orders)
# One recorded run moves bench_shop1.orders' watermark to the change; every timed run (which
# records nothing) then reads the rows changed within lookback_minutes of it: exactly the 1 %.
run_timed incremental-setup "$BIN" --pipeline "$WORK/params.json" -q --databases bench_shop1 --tables orders
run_timed incremental-window "$BIN" --pipeline "$WORK/params.json" --dry-run --databases bench_shop1 --tables orders
SINCE=$(grep -o "updated_at >= '[^']*'" "$WORK/incremental-window.out" | head -1 | cut -d"'" -f2)
[ -n "$SINCE" ] || { echo "no incremental window in the dry run:"; cat "$WORK/incremental-window.out"; exit 1; }
: >"$WORK/select.txt"
: >"$WORK/incremental.txt"
for i in $(seq "$REPEAT"); do
  # The same window connector-run reads: from the watermark minus lookback_minutes (10).
  run_timed select "${MYSQL[@]}" --quick -e "SELECT * FROM bench_shop1.orders WHERE updated_at >= '$SINCE'"
  echo "$ELAPSED $CPU $SERVER $RSS_MB" >>"$WORK/select.txt"
  run_timed incremental "${INCREMENTAL[@]}"
  echo "$ELAPSED $CPU $SERVER $RSS_MB" >>"$WORK/incremental.txt"
done
# Read: the rows sent, plus those of the window the setup run's digests say the target holds
# unchanged (left out, at most 256).
SENT=$(awk '/INCREMENTAL/ { print $3; exit }' "$WORK/incremental.out")
HELD=$(grep -oE "[0-9]+ rows? read again in the window" "$WORK/incremental.out" | awk '{ print $1; exit }')
[ "$(( ${SENT:-0} + ${HELD:-0} ))" = "$CHANGED" ] || {
  echo "the incremental run did not read exactly the $CHANGED changed rows:"; cat "$WORK/incremental.out"; exit 1; }
line "the same window, mariadb client" "$CHANGED" "$(med "$WORK/select.txt" 1)" "$(med "$WORK/select.txt" 2)" "$(med "$WORK/select.txt" 3)" "$(med "$WORK/select.txt" 4)"
INCR_TIME=$(med "$WORK/incremental.txt" 1)
line "connector-run incremental, 1 % changed" "$CHANGED" "$INCR_TIME" "$(med "$WORK/incremental.txt" 2)" "$(med "$WORK/incremental.txt" 3)" "$(med "$WORK/incremental.txt" 4)"
awk -v i="$INCR_TIME" -v s="$(med "$WORK/select.txt" 1)" -v f="$FULL_TIME" \
  'BEGIN { printf "    incremental / full time: %.1f %% (the bare SELECT alone: %.1f %%)\n", 100 * i / f, 100 * s / f }'

echo "==> the same change end to end into the local emulator"
run_timed e2e-incremental "$BIN" --pipeline "$WORK/params.json" -q
ROWS_SYNCED=$(rows_synced "$WORK/e2e-incremental.out")
BYTES_PER_ROW=0 line "incremental, 1 % of orders changed" "${ROWS_SYNCED:-0}" "$ELAPSED" "$CPU" "$SERVER" "$RSS_MB"
jobs "$(run_id)"

echo "(logs and outputs in $WORK)"
