#!/usr/bin/env bash
# Run the tests: the README's "run the tests" command, and what CI runs (.ci/run).
#
#   scripts/test.sh [ARGS...]      ARGS are appended to `cargo test --workspace` (e.g. a filter)
#
# 1. scripts/mariadb.sh ensure     MariaDB on 127.0.0.1:${MYSQL_PORT:-3306}, root, empty password
# 2. scripts/bq-emulator.sh install (the tests start their own emulators on free ports with
#    `scripts/bq-emulator.sh start --port N --fresh`; BQ_EMULATOR_SCRIPT points them at it)
# 3. cargo fmt --all -- --check
# 4. cargo clippy --workspace --all-targets -- -D warnings
# 5. cargo test --workspace
# Steps 3-5 all run even when one fails (TEST_FAIL_FAST=1 stops at the first failure); the exit
# code is non-zero when any step failed.
# Exports for the tests: MYSQL_URL=mysql://root@127.0.0.1:PORT, BQ_EMULATOR_SCRIPT.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

MYSQL_PORT="${MYSQL_PORT:-3306}"
export MYSQL_PORT
export MYSQL_URL="mysql://root@127.0.0.1:$MYSQL_PORT"
export BQ_EMULATOR_SCRIPT="$ROOT/scripts/bq-emulator.sh"

step() { printf '\n==> %s\n' "$*"; }

T0=$SECONDS
step "MariaDB"
bash scripts/mariadb.sh ensure
step "BigQuery emulator (install only)"
bash scripts/bq-emulator.sh install
echo "MYSQL_URL=$MYSQL_URL"
echo "BQ_EMULATOR_SCRIPT=$BQ_EMULATOR_SCRIPT"

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

run fmt cargo fmt --all -- --check
run clippy cargo clippy --workspace --all-targets -- -D warnings
run test cargo test --workspace "$@"
summary
