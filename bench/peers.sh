#!/usr/bin/env bash
# Peer tools on the benchmark's table, to set connector-run's numbers beside them:
#   - Sling: MySQL table -> one local file (CSV, JSON lines, Parquet);
#   - ConnectorX: SELECT * -> Arrow table in memory, and -> one Parquet file (streamed batches).
# Each run is timed like run.sh's `measure` and printed in the same format, followed by the rows
# the peer actually produced; a peer that fails prints why, and the rest still run.
#
#   bench/peers.sh                      # bench_shop1.orders, as left by bench/run.sh
#   PEERS_DB=peers_test bench/peers.sh
#
# Environment (bench/run.sh sets these; the defaults let it run alone):
#   PEERS_DB (bench_shop1), PEERS_TABLE (orders), PEERS_ROWS (counted), BYTES_PER_ROW (measured as in
#   run.sh), CEILING (rows/s of mariadb-dump; 0 = no ratio), MYSQL_PORT (3306), WORK (bench-work),
#   PEERS_SLING_FORMATS ("csv jsonl parquet"), PEERS_REPEAT (3: ConnectorX into Arrow, medians),
#   PEERS_INSTALL_ONLY (1: install the peers, print the venv's python, run nothing).
# Exits non-zero only if the peers cannot be installed.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
DB="${PEERS_DB:-bench_shop1}"
TABLE="${PEERS_TABLE:-orders}"
PORT="${MYSQL_PORT:-3306}"
WORK="${WORK:-$ROOT/bench-work}"
CEILING="${CEILING:-0}"
FORMATS="${PEERS_SLING_FORMATS:-csv jsonl parquet}"
OUT="$WORK/peers"
VENV="$WORK/peers-venv"
MYSQL=(mariadb -h127.0.0.1 -P"$PORT" -uroot)
mkdir -p "$OUT"

# The `sling` package itself is only a wrapper that downloads the Go binary from GitHub on first
# use, which this machine cannot reach; sling-linux-<arch> ships that binary inside the wheel (its
# last release is 1.4.11). Pinned so that runs compare like with like.
case "$(uname -m)" in
  aarch64 | arm64) SLING_PKG=sling_linux_arm64 ;;
  *) SLING_PKG=sling_linux_amd64 ;;
esac
PINS=("${SLING_PKG//_/-}==1.4.11" "connectorx==0.4.6" "pyarrow==26.0.1")
if [[ "$(cat "$VENV/.pins" 2>/dev/null)" != "${PINS[*]}" ]]; then
  echo "==> installing peers into $VENV: ${PINS[*]}"
  t0=$SECONDS
  if ! { python3 -m venv "$VENV" && "$VENV/bin/pip" install -q --disable-pip-version-check "${PINS[@]}"; } \
    >"$OUT/install.log" 2>&1; then
    echo "peer install failed:"; tail -20 "$OUT/install.log"; exit 1
  fi
  echo "${PINS[*]}" >"$VENV/.pins"
  echo "    installed in $((SECONDS - t0)) s"
fi
PY="$VENV/bin/python"
# PEERS_INSTALL_ONLY=1: install, print the venv's python and stop (run.sh alternates ConnectorX
# with its own runs).
if [ "${PEERS_INSTALL_ONLY:-0}" = 1 ]; then
  echo "$PY"
  exit 0
fi
SLING=$("$PY" -c "import $SLING_PKG as s; print(s.SLING_BIN)")

ROWS="${PEERS_ROWS:-$("${MYSQL[@]}" -N -e "SELECT COUNT(*) FROM \`$DB\`.\`$TABLE\`")}"
# Average size of a row as JSON lines, for MB/s: the same measure as run.sh (orders' columns).
BYTES_PER_ROW="${BYTES_PER_ROW:-$("${MYSQL[@]}" -N -e "SELECT AVG(LENGTH(JSON_OBJECT('id', id, 'user_id', user_id, 'amount', amount, 'status', status, 'note', note, 'attributes', attributes, 'created_at', created_at, 'updated_at', updated_at))) FROM \`$DB\`.\`$TABLE\`")}"

# run_peer NAME COMMAND...: runs COMMAND under /usr/bin/time with output in $LOG; sets ELAPSED,
# CPU_USER, CPU_SYS, RSS_KB. On failure prints one line saying so and returns 1.
run_peer() {
  local name="$1"
  shift
  LOG="$OUT/$(tr -c 'A-Za-z0-9\n' '_' <<<"$name").out"
  if ! /usr/bin/time -f "%e %U %S %M" -o "$OUT/time.txt" "$@" >"$LOG" 2>&1; then
    # time.txt starts with "Command exited with non-zero status N" or "... terminated by signal N".
    printf "%-34s FAILED (%s): %s  [log: %s]\n" "$name" "$(head -1 "$OUT/time.txt")" \
      "$(grep -v '^[[:space:]]*$' "$LOG" | tail -1 | cut -c1-160)" "$LOG"
    return 1
  fi
  # The numbers are the last line of time.txt.
  read -r ELAPSED CPU_USER CPU_SYS RSS_KB < <(tail -1 "$OUT/time.txt")
}

# report NAME GOT: prints the result line in run.sh's format (rates over the table's $ROWS), then
# the rows the peer produced, flagged when they differ from the table's.
report() {
  local name="$1" got="$2"
  awk -v n="$name" -v r="$ROWS" -v e="$ELAPSED" -v u="$CPU_USER" -v s="$CPU_SYS" -v m="$RSS_KB" \
    -v b="$BYTES_PER_ROW" -v c="$CEILING" -v g="$got" 'BEGIN {
    rate = (e > 0) ? r / e : 0
    mb = r * b / 1e6
    printf "%-34s %10d rows %8.2f s %11.0f rows/s %8.1f MB/s %7.2f CPU s %7.1f MB RSS", n, r, e, rate, (e > 0 ? mb / e : 0), u + s, m / 1024
    if (c > 0) printf "   %.2f x ceiling", rate / c
    if (g == r) printf "   out %s/%d rows\n", g, r
    else printf "   ROWS MISMATCH: out %s of %d\n", g, r }'
}

# count_rows FORMAT FILE: rows in a file the peer wrote (CSV with a header line).
count_rows() {
  local fmt="$1" file="$2"
  [[ -f "$file" ]] || { echo "no-file"; return; }
  case "$fmt" in
    jsonl) wc -l <"$file" | tr -d ' ' ;;
    # csv module, not wc -l: a quoted field may hold a newline.
    csv) "$PY" -c 'import csv, sys; print(sum(1 for _ in csv.reader(open(sys.argv[1], newline="", encoding="utf-8"))) - 1)' "$file" ;;
    parquet) "$PY" -c 'import pyarrow.parquet as pq, sys; print(pq.ParquetFile(sys.argv[1]).metadata.num_rows)' "$file" ;;
    *) echo "?" ;;
  esac
}

echo "==> peers on $DB.$TABLE: sling $("$SLING" --version 2>/dev/null | awk '{print $NF}'), connectorx $("$PY" -c 'import connectorx; print(connectorx.__version__)')"

# Sling takes a connection from an env var holding its URL. Its home dir is kept under $OUT, its
# telemetry off (no network here), and SLING_DUCKDB_COMPUTE=false makes it write Parquet with its
# own writer: otherwise 1.4.11 downloads a DuckDB CLI from GitHub for that, which fails here.
export PEERS_MYSQL="mysql://root@127.0.0.1:$PORT/$DB"
export SLING_HOME_DIR="$OUT/sling-home" SLING_DISABLE_TELEMETRY=true SLING_DUCKDB_COMPUTE=false
for fmt in $FORMATS; do
  name="sling -> $fmt file"
  file="$OUT/sling.$fmt"
  rm -f "$file"
  if run_peer "$name" "$SLING" run --src-conn PEERS_MYSQL --src-stream "$DB.$TABLE" --tgt-object "file://$file"; then
    report "$name" "$(count_rows "$fmt" "$file")"
  fi
  rm -f "$file" # up to a few hundred MB at the benchmark's size; only the count is needed
done

URL="mysql://root@127.0.0.1:$PORT/$DB"
QUERY="SELECT * FROM \`$DB\`.\`$TABLE\`"
# The CPU-per-row comparison's peer: PEERS_REPEAT runs (default 3), medians, as run.sh does.
name="connectorx -> arrow (memory)"
: >"$OUT/arrow.txt"
for _ in $(seq "${PEERS_REPEAT:-3}"); do
  run_peer "$name" "$PY" "$HERE/peers_connectorx.py" arrow "$URL" "$QUERY" || break
  echo "$ELAPSED $CPU_USER $CPU_SYS $RSS_KB" >>"$OUT/arrow.txt"
  got=$(tail -1 "$LOG")
done
if [ -s "$OUT/arrow.txt" ]; then
  column_median() { awk -v c="$1" '{ print $c }' "$OUT/arrow.txt" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
  # CPU as one column (user + system), so the median is of the total.
  ELAPSED=$(column_median 1) CPU_USER=$(awk '{ print $2 + $3 }' "$OUT/arrow.txt" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }') CPU_SYS=0 RSS_KB=$(column_median 4)
  report "$name (median of $(wc -l <"$OUT/arrow.txt"))" "$got"
fi
name="connectorx -> parquet file"
file="$OUT/connectorx.parquet"
rm -f "$file"
if run_peer "$name" "$PY" "$HERE/peers_connectorx.py" parquet "$URL" "$QUERY" "$file"; then
  report "$name" "$(count_rows parquet "$file")"
fi
rm -f "$file"
exit 0
