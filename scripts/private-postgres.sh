#!/usr/bin/env bash
# A private PostgreSQL server for the tests, the demo and the benchmarks: its own data dir and
# port, so the machine's own server (and its databases) is never touched.
#
#   scripts/private-postgres.sh start --dir DIR [--port N] [--no-tls]   start (or reuse) it; prints the port
#   scripts/private-postgres.sh stop --dir DIR                          stop it
#   scripts/private-postgres.sh status --dir DIR                        exit 0 when it answers, 3 when not
#
# The server: the superuser postgres over TCP on 127.0.0.1 without a password (trust), except
# the role connector_pw, which must give its password (scram-sha-256); TLS with a CA and a
# server certificate for localhost/127.0.0.1 made with openssl at first start (DIR/tls/ca.pem,
# and other-ca.pem, a CA that signed nothing here; never committed). --no-tls: no TLS at all.
# Installs postgresql and openssl from Debian when missing (needs root). As root, the server
# runs as the postgres user (initdb refuses root); when that user cannot reach DIR (a clone in
# a private folder such as mktemp's), the server's files live in a folder of its own under /tmp,
# named in DIR/rundir, linked as DIR/tls, and removed by stop. DIR/port holds the port,
# DIR/server.log the server's log.
set -euo pipefail
NAME=private-postgres
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DIR=""
PORT=""
TLS=1
while [ $# -gt 1 ]; do
  case "$2" in
    --dir) DIR="${3:?--dir needs a value}"; set -- "$1" "${@:4}" ;;
    --port) PORT="${3:?--port needs a value}"; set -- "$1" "${@:4}" ;;
    --no-tls) TLS=0; set -- "$1" "${@:3}" ;;
    *) die "unknown option: $2" ;;
  esac
done
CMD="${1:-}"
[ -n "$CMD" ] || usage
[ -n "$DIR" ] || die "give --dir DIR"
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
# RUN: where the server's own files are (data, TLS, socket, log).
RUN="$DIR"
[ -f "$DIR/rundir" ] && RUN="$(cat "$DIR/rundir")"

pg_bin() {
  local d
  d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
  [ -n "$d" ] && [ -x "$d/initdb" ] && echo "$d"
}
# runs a command as the server's owner (postgres when this is root)
as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
tcp_ok() {
  [ -f "$DIR/port" ] && psql "host=127.0.0.1 port=$(cat "$DIR/port") user=postgres dbname=postgres sslmode=disable connect_timeout=2" \
    -Atc 'select 1' >/dev/null 2>&1
}

cmd_start() {
  if tcp_ok; then
    cat "$DIR/port"
    return 0
  fi
  # The server's binaries (pg_ctlcluster comes with them), then the client.
  pg_bin >/dev/null || need pg_ctlcluster postgresql
  need psql postgresql-client
  local bin
  bin="$(pg_bin)" || die "no initdb under /usr/lib/postgresql/*/bin after installing postgresql"
  if [ "$(id -u)" = 0 ] && [ "$RUN" = "$DIR" ] && ! runuser -u postgres -- test -x "$DIR"; then
    RUN="$(mktemp -d /tmp/connector-postgres.XXXXXX)"
    chmod 755 "$RUN"
    echo "$RUN" >"$DIR/rundir"
  fi
  [ "$RUN" = "$DIR" ] || { ln -sfn "$RUN/tls" "$DIR/tls"; ln -sfn "$RUN/server.log" "$DIR/server.log"; }
  local chosen=0
  [ -n "$PORT" ] || { PORT="$(free_port)"; chosen=1; }
  port_busy "$PORT" && die "port $PORT is in use"
  local tls_opts=()
  if [ "$TLS" = 1 ]; then
    make_test_tls "$RUN/tls" "DNS:localhost,IP:127.0.0.1"
    tls_opts=(-c ssl=on -c "ssl_cert_file=$RUN/tls/server.pem" -c "ssl_key_file=$RUN/tls/server-key.pem"
      -c "ssl_ca_file=$RUN/tls/ca.pem")
  fi
  [ "$(id -u)" = 0 ] && chown -R postgres: "$RUN"
  if [ ! -f "$RUN/data/PG_VERSION" ]; then
    as_owner "$bin/initdb" -D "$RUN/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$DIR/initdb.log" 2>&1 ||
      { tail -20 "$DIR/initdb.log" >&2; die "initdb failed (log: $DIR/initdb.log)"; }
    # The password role first: pg_hba.conf's first matching line decides.
    { echo "host all connector_pw 127.0.0.1/32 scram-sha-256"; cat "$RUN/data/pg_hba.conf"; } >"$DIR/hba.tmp"
    cat "$DIR/hba.tmp" >"$RUN/data/pg_hba.conf"
    rm -f "$DIR/hba.tmp"
    touch "$DIR/.fresh"
  fi
  # A port nothing listens on can still be taken by the time the server binds it; a port this
  # script chose is then chosen again, a port the caller gave is an error.
  local attempt log_from said
  for attempt in 1 2 3 4 5; do
    log_from=0
    [ -f "$RUN/server.log" ] && log_from="$(stat -c %s "$RUN/server.log")"
    echo "$PORT" >"$DIR/port"
    as_owner "$bin/pg_ctl" -D "$RUN/data" -l "$RUN/server.log" -w -t 60 start -o \
      "-p $PORT -k $RUN -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off -c synchronous_commit=off \
       -c full_page_writes=off -c shared_buffers=256MB ${tls_opts[*]}" >/dev/null && break
    said="$(tail -c +"$((log_from + 1))" "$RUN/server.log" 2>/dev/null || true)"
    if grep -q 'Address already in use' <<<"$said"; then
      [ "$chosen" = 1 ] && [ "$attempt" -lt 5 ] || die "port $PORT is in use (log: $DIR/server.log)"
      log "port $PORT was taken as the server started; trying another"
      PORT="$(free_port)"
      continue
    fi
    tail -30 "$RUN/server.log" >&2
    die "the server did not start"
  done
  if [ -f "$DIR/.fresh" ]; then
    psql "host=127.0.0.1 port=$PORT user=postgres dbname=postgres sslmode=disable" -q \
      -c "CREATE ROLE connector_pw LOGIN PASSWORD 'pw-s3cret-9'" >/dev/null
    rm -f "$DIR/.fresh"
  fi
  tcp_ok || die "started, but postgres cannot log in over TCP 127.0.0.1:$PORT"
  log "PostgreSQL $(psql "host=127.0.0.1 port=$PORT user=postgres dbname=postgres sslmode=disable" -Atc 'show server_version') on 127.0.0.1:$PORT (data $RUN/data, $([ "$TLS" = 1 ] && echo "TLS CA $DIR/tls/ca.pem" || echo "no TLS"))"
  echo "$PORT"
}

cmd_stop() {
  local bin
  bin="$(pg_bin)" || { log "no PostgreSQL installed"; return 0; }
  if [ -f "$RUN/data/postmaster.pid" ]; then
    as_owner "$bin/pg_ctl" -D "$RUN/data" -m fast -w -t 60 stop >/dev/null 2>&1 || true
    log "stopped ($DIR)"
  else
    log "not running ($DIR)"
  fi
  # A folder of its own under /tmp goes with it.
  if [ "$RUN" != "$DIR" ]; then
    rm -rf "$RUN"
    rm -f "$DIR/rundir" "$DIR/tls" "$DIR/server.log"
  fi
}

case "$CMD" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) if tcp_ok; then echo "running on 127.0.0.1:$(cat "$DIR/port")"; else echo "not running"; exit 3; fi ;;
  *) usage ;;
esac
