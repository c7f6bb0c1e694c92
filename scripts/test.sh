#!/usr/bin/env bash
# Run the tests: the README's "run the tests" command, and what CI runs (.ci/run).
#
#   scripts/test.sh [ARGS...]      ARGS are appended to the cargo test command (e.g. a filter)
#
# 1. a private MariaDB and a private PostgreSQL for the end-to-end tests
#    (scripts/private-mariadb.sh, scripts/private-postgres.sh: own ports and data dirs under
#    target/test-servers, TLS on, MariaDB's binary log on; tests that need other settings start
#    their own the same way): the machine's own servers are never used or modified. Ports are
#    chosen below the kernel's ephemeral range (scripts/lib.sh free_port), and a port taken
#    by the time the server binds it is replaced by another.
# 2. the BigQuery emulator installed (scripts/bq-emulator.sh install); the tests start their
#    own emulators on free ports under target/test-servers/bq; Debian's chromium and
#    chromium-driver for the console's browser test (installed when missing)
# 3. cargo fmt --check; cargo clippy --all-targets --all-features -D warnings; cargo doc with
#    warnings denied; a build with the toolchain of the declared rust-version
# 4. cargo test --workspace --features connector-run/e2e (unit tests, and the end-to-end tests
#    against the servers above)
# Every step runs even when one fails (TEST_FAIL_FAST=1 stops at the first failure); the exit
# code is non-zero when any step failed. Everything the tests started is stopped at the end, and
# the servers' folders removed (TEST_KEEP_SERVERS=1 keeps them running for a rerun).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
NAME=test
source scripts/lib.sh

SERVERS="$ROOT/target/test-servers"
export BQ_EMULATOR_SCRIPT="$ROOT/scripts/bq-emulator.sh"
export BQ_EMULATOR_RUN_DIR="$SERVERS/bq"

step() { printf '\n==> %s\n' "$*"; }

cleanup() {
  [ "${TEST_KEEP_SERVERS:-0}" = 1 ] && return 0
  bash scripts/bq-emulator.sh stop-all >/dev/null 2>&1 || true
  bash scripts/private-mariadb.sh stop --dir "$SERVERS/mariadb" >/dev/null 2>&1 || true
  bash scripts/private-postgres.sh stop --dir "$SERVERS/postgres" >/dev/null 2>&1 || true
  rm -rf "$SERVERS"
}
trap cleanup EXIT

T0=$SECONDS
step "MariaDB: a private server for the tests"
PRIVATE_PORT="$(bash scripts/private-mariadb.sh start --dir "$SERVERS/mariadb")"
export MYSQL_URL="mysql://root@127.0.0.1:$PRIVATE_PORT"
export MYSQL_TLS_DIR="$SERVERS/mariadb/tls"
step "PostgreSQL: a private server for the tests"
PG_PORT="$(bash scripts/private-postgres.sh start --dir "$SERVERS/postgres")"
export PG_PORT
export PG_TLS_DIR="$SERVERS/postgres/tls"
step "BigQuery emulator (install only)"
bash scripts/bq-emulator.sh install
step "Chromium and ChromeDriver for the console's browser test"
need chromedriver chromium chromium-driver
echo "MYSQL_URL=$MYSQL_URL (private)  PG_PORT=$PG_PORT (private)  BQ_EMULATOR_RUN_DIR=$BQ_EMULATOR_RUN_DIR"

FAILED=()
SUMMARY=()
run() {
  # run "$@" as one named step; record the result
  local name="$1" t=$SECONDS rc=0
  shift
  step "$name: $*"
  "$@" || rc=$?
  if [ "$rc" -eq 0 ]; then
    SUMMARY+=("ok      $name ($((SECONDS - t)) s)")
  else
    SUMMARY+=("FAILED  $name (exit code $rc, $((SECONDS - t)) s)")
    FAILED+=("$name")
    if [ "${TEST_FAIL_FAST:-0}" = 1 ]; then summary; fi
  fi
}
summary() {
  step "Summary ($((SECONDS - T0)) s)"
  printf '  %s\n' "${SUMMARY[@]}"
  if [ "${#FAILED[@]}" -gt 0 ]; then
    echo "test.sh: failed: ${FAILED[*]}" >&2
    exit 1
  fi
  echo "test.sh: all passed"
  exit 0
}

# The toolchain the workspace declares (rust-version in Cargo.toml), installed by rustup.
MSRV="$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml)"
msrv_check() {
  local active
  active="$(rustc --version | cut -d' ' -f2)"
  if [ "${active%.*}" = "${MSRV%.*}" ] || [ "${active%.*}" = "$MSRV" ]; then
    echo "the active toolchain is rustc $active: the builds above are the rust-version $MSRV build"
  elif rustup toolchain list 2>/dev/null | grep -q "^$MSRV"; then
    cargo "+$MSRV" check --workspace --all-targets --all-features --quiet
  else
    log "toolchain $MSRV (rust-version) is not installed: run rustup toolchain install $MSRV"
    return 1
  fi
}

run fmt cargo fmt --all -- --check
run clippy cargo clippy --workspace --all-targets --all-features -- -D warnings
run doc env RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --all-features --quiet
run "rust-version $MSRV" msrv_check
# Discovery kept between runs (`schema_cache_dir`'s default) goes to the tests' folder, not ~/.cache.
run test env XDG_CACHE_HOME="$SERVERS/cache" cargo test --workspace --features connector-run/e2e "$@"
summary
