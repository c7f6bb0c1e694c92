# Shared helpers of the benchmarks; sourced after scripts/lib.sh, never run. The caller sets
# WORK (a scratch folder), BYTES_PER_ROW (0: no MB/s column) and defines server_cpu (the
# database server's CPU seconds so far).

# run_timed NAME COMMAND...: runs COMMAND once; sets ELAPSED, CPU (the command's), SERVER (the
# server's CPU meanwhile) and RSS_MB; exits the benchmark on failure.
run_timed() {
  local name="$1" before user sys rss_kb
  shift
  before=$(server_cpu)
  /usr/bin/time -f "%e %U %S %M" -o "$WORK/time.txt" "$@" >"$WORK/$name.out" 2>&1 || {
    echo "$name failed:"; tail -20 "$WORK/$name.out"; exit 1; }
  read -r ELAPSED user sys rss_kb < <(tail -1 "$WORK/time.txt")
  CPU=$(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.2f", u + s }')
  SERVER=$(awk -v a="$before" -v b="$(server_cpu)" 'BEGIN { printf "%.2f", b - a }')
  RSS_MB=$(awk -v m="$rss_kb" 'BEGIN { printf "%.1f", m / 1024 }')
}

# median: the median of the numbers on stdin.
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# line NAME ROWS SECONDS CPU SERVER RSS_MB [CEILING_RATE]: one result line; MB/s from the
# orders rows' size (BYTES_PER_ROW=0 leaves it out, for runs over every table).
line() {
  awk -v n="$1" -v r="$2" -v e="$3" -v c="$4" -v sv="$5" -v m="$6" -v ceil="${7:-0}" -v b="$BYTES_PER_ROW" 'BEGIN {
    rate = (e > 0) ? r / e : 0
    printf "%-38s %9d rows %7.2f s %10.0f rows/s", n, r, e, rate
    if (b > 0) printf " %7.1f MB/s", (e > 0 ? r * b / 1e6 / e : 0); else printf " %12s", ""
    printf " %6.2f CPU s (server %5.2f) %6.1f MB RSS", c, sv, m
    if (ceil > 0) printf "   %.2f x ceiling", rate / ceil
    printf "\n" }'
}

# med FILE COLUMN: the median of one column of a results file.
med() { awk -v c="$2" '{ print $c }' "$1" | median; }
