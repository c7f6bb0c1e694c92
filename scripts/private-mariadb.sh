#!/usr/bin/env bash
# A private MariaDB server for the tests and the demo: its own data dir and port, so the
# machine's own server (and its databases) is never touched.
#
#   scripts/private-mariadb.sh start --dir DIR [--port N] [--no-binlog] [--no-tls] [--tls-name NAME]
#                                                           start (or reuse) it; prints the port
#   scripts/private-mariadb.sh stop --dir DIR               stop it
#   scripts/private-mariadb.sh status --dir DIR             exit 0 when it answers, 3 when not
#
# The server: root over TCP on 127.0.0.1 with an empty password; binary log on in the form
# binlog CDC needs (ROW, FULL images, FULL metadata, GTID strict mode, server id 11); the time
# zone tables loaded from /usr/share/zoneinfo; TLS with a CA and a server certificate for
# localhost/127.0.0.1 made with openssl at first start (DIR/tls/ca.pem; never committed).
# --no-binlog: no binary log, MariaDB's defaults for its format (the "server not set up for
# --cdc" case of the tests). --no-tls: no TLS at all. --tls-name NAME: the server certificate
# is for NAME only (not localhost/127.0.0.1: "a certificate for another host"). DIR/tls also
# holds client.pem / client-key.pem (a client certificate of the same CA) and other-ca.pem (a
# CA that signed nothing here).
# Installs mariadb-server, tzdata and openssl from Debian when missing (needs root).
# DIR/port holds the port, DIR/error.log the server's log.
set -euo pipefail
NAME=private-mariadb
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DIR=""
PORT=""
BINLOG=(--log-bin=mariadb-bin --server-id=11 --binlog-format=ROW --binlog-row-image=FULL --binlog-row-metadata=FULL
  --gtid-strict-mode=ON --gtid-domain-id=0 --max-binlog-size=64M)
BINLOG_SAID="binlog on"
TLS=1
TLS_SAN="DNS:localhost,IP:127.0.0.1"
while [ $# -gt 1 ]; do
  case "$2" in
    --dir) DIR="${3:?--dir needs a value}"; set -- "$1" "${@:4}" ;;
    --port) PORT="${3:?--port needs a value}"; set -- "$1" "${@:4}" ;;
    --no-binlog) BINLOG=(--server-id=12); BINLOG_SAID="binlog off"; set -- "$1" "${@:3}" ;;
    --no-tls) TLS=0; set -- "$1" "${@:3}" ;;
    --tls-name) TLS_SAN="DNS:${3:?--tls-name needs a value}"; set -- "$1" "${@:4}" ;;
    *) die "unknown option: $2" ;;
  esac
done
CMD="${1:-}"
[ -n "$CMD" ] || usage
[ -n "$DIR" ] || die "give --dir DIR"
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
SOCK="$DIR/mysqld.sock"
PID_FILE="$DIR/mysqld.pid"

sql() { "$(client_bin)" --no-defaults --protocol=SOCKET -S "$SOCK" -uroot -N -B "$@"; }
tcp_ok() {
  [ -f "$DIR/port" ] && "$(client_bin)" --no-defaults --protocol=TCP -h127.0.0.1 -P"$(cat "$DIR/port")" -uroot --password= \
    --connect-timeout=2 -N -B -e 'select 1' >/dev/null 2>&1
}

# launch_server: starts the server on $PORT and waits until it answers; returns 1 when it could
# not bind the port, dies on any other failure.
launch_server() {
  local log_from=0
  [ -f "$DIR/error.log" ] && log_from="$(stat -c %s "$DIR/error.log")"
  echo "$PORT" >"$DIR/port"
  nohup setsid "$(server_bin)" --no-defaults "${user[@]}" --datadir="$DIR/data" --tmpdir="$DIR/tmp" --port="$PORT" \
    --bind-address=127.0.0.1 --socket="$SOCK" --pid-file="$PID_FILE" --log-error="$DIR/error.log" \
    "${BINLOG[@]}" \
    --character-set-server=utf8mb4 --collation-server=utf8mb4_general_ci --max-connections=500 \
    --innodb-buffer-pool-size=256M --innodb-flush-log-at-trx-commit=2 --skip-name-resolve \
    "${TLS_OPTS[@]}" \
    </dev/null >/dev/null 2>&1 &
  local pid=$!
  local deadline=$((SECONDS + 60)) said
  until sql -e 'select 1' >/dev/null 2>&1; do
    # The server's own log says when it gave up (it writes "Aborting" before it exits).
    said="$(tail -c +"$((log_from + 1))" "$DIR/error.log" 2>/dev/null || true)"
    if grep -q '\[ERROR\] Aborting' <<<"$said"; then
      # before the next try, the server that gave up must be gone with its files' locks
      grep -q 'Address already in use' <<<"$said" && { wait "$pid" 2>/dev/null || true; return 1; }
      tail -30 "$DIR/error.log" >&2
      die "the server stopped as it started (log: $DIR/error.log)"
    fi
    [ "$SECONDS" -lt "$deadline" ] || { tail -30 "$DIR/error.log" >&2; die "the server did not start within 60 s"; }
    sleep 0.3
  done
}

cmd_start() {
  if tcp_ok; then
    cat "$DIR/port"
    return 0
  fi
  need "$(client_bin 2>/dev/null || echo mariadb)" mariadb-server mariadb-client
  server_bin >/dev/null || need mariadbd mariadb-server
  need mariadb-tzinfo-to-sql mariadb-server
  [ -d /usr/share/zoneinfo/America ] || need tzselect tzdata
  TLS_OPTS=()
  if [ "$TLS" = 1 ]; then
    make_test_tls "$DIR/tls" "$TLS_SAN"
    TLS_OPTS=(--ssl-ca="$DIR/tls/ca.pem" --ssl-cert="$DIR/tls/server.pem" --ssl-key="$DIR/tls/server-key.pem")
  fi
  local chosen=0
  [ -n "$PORT" ] || { PORT="$(free_port)"; chosen=1; }
  port_busy "$PORT" && die "port $PORT is in use"
  local user=()
  [ "$(id -u)" = 0 ] && user=(--user=root)
  mkdir -p "$DIR/tmp"
  if [ ! -d "$DIR/data/mysql" ]; then
    mkdir -p "$DIR/data"
    # A private --tmpdir: bootstraps running side by side otherwise collide on their temporary
    # tables in /tmp ("File '/tmp/#sql-temptable-….MAD' not found").
    mariadb-install-db --no-defaults "${user[@]}" --datadir="$DIR/data" --tmpdir="$DIR/tmp" \
      --auth-root-authentication-method=normal --skip-test-db >"$DIR/install.log" 2>&1 ||
      { head -20 "$DIR/install.log" >&2; die "mariadb-install-db failed (log: $DIR/install.log)"; }
    touch "$DIR/.fresh"
  fi
  # A port nothing listens on can still be taken by the time the server binds it; a port this
  # script chose is then chosen again, a port the caller gave is an error.
  local attempt
  for attempt in 1 2 3 4 5; do
    launch_server && break
    [ "$chosen" = 1 ] && [ "$attempt" -lt 5 ] || die "port $PORT is in use (log: $DIR/error.log)"
    log "port $PORT was taken as the server started; trying another"
    PORT="$(free_port)"
  done
  if [ -f "$DIR/.fresh" ]; then
    # root over TCP from 127.0.0.1 (skip-name-resolve: no 'localhost' mapping), no anonymous users
    sql <<'SQL'
CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY '';
GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;
DELETE FROM mysql.global_priv WHERE User = '';
FLUSH PRIVILEGES;
SQL
    { echo 'SET SESSION sql_log_bin = 0;'; mariadb-tzinfo-to-sql /usr/share/zoneinfo 2>/dev/null; } | sql mysql
    rm -f "$DIR/.fresh"
  fi
  tcp_ok || die "started, but root cannot log in over TCP 127.0.0.1:$PORT"
  log "MariaDB $(sql -e 'select version()') on 127.0.0.1:$PORT (data $DIR/data, $BINLOG_SAID, $([ "$TLS" = 1 ] && echo "TLS CA $DIR/tls/ca.pem" || echo "no TLS"))"
  echo "$PORT"
}

cmd_stop() {
  local pid=""
  [ -f "$PID_FILE" ] && pid="$(cat "$PID_FILE" 2>/dev/null || true)"
  if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
    log "not running ($DIR)"
    return 0
  fi
  kill -TERM "$pid"
  for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  log "stopped pid $pid ($DIR)"
}

case "$CMD" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) if tcp_ok; then echo "running on 127.0.0.1:$(cat "$DIR/port")"; else echo "not running"; exit 3; fi ;;
  *) usage ;;
esac
