#!/usr/bin/env bash
# Local MariaDB server for the tests and the demo.
#
#   scripts/mariadb.sh ensure     make sure a server answers on 127.0.0.1:${MYSQL_PORT:-3306}
#                                 for root with an empty password (installs / starts / fixes auth)
#   scripts/mariadb.sh status     exit 0 when that login works, 3 when not
#
# ensure, step by step (each step only when needed, so it is safe to run again and again):
#   1. no mariadb/mariadbd: apt-get update + apt-get install mariadb-server mariadb-client (needs root)
#   2. server not running: /run/mysqld (owned by mysql), mariadb-install-db when
#      /var/lib/mysql/mysql is missing, start mariadbd with start-stop-daemon (no systemd needed),
#      wait up to ${MYSQL_START_TIMEOUT:-60} s
#   3. TCP login as root without a password refused (e.g. Debian's socket-only root): log in over
#      the unix socket as the OS root and let root@localhost / root@127.0.0.1 use an empty password
#   4. print the server version
set -euo pipefail

MYSQL_PORT="${MYSQL_PORT:-3306}"
START_TIMEOUT="${MYSQL_START_TIMEOUT:-60}"
DATADIR="/var/lib/mysql"
RUNDIR="/run/mysqld"
MARIADBD="/usr/sbin/mariadbd"
INITIALISED=0

NAME=mariadb
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

admin_bin() {
  if command -v mariadb-admin >/dev/null 2>&1; then echo mariadb-admin
  elif command -v mysqladmin >/dev/null 2>&1; then echo mysqladmin
  else return 1; fi
}

# root over TCP with an empty password works
tcp_ok() {
  "$(client_bin)" --protocol=TCP -h127.0.0.1 -P"$MYSQL_PORT" -uroot --password= \
    --connect-timeout=3 -N -B -e 'select 1' >/dev/null 2>&1
}

# the socket file the server uses (from the option files; Debian: /run/mysqld/mysqld.sock)
socket_path() {
  local s=""
  if command -v my_print_defaults >/dev/null 2>&1; then
    s="$(my_print_defaults mysqld 2>/dev/null | sed -n 's/^--socket=//p' | tail -n1)"
  fi
  echo "${s:-$RUNDIR/mysqld.sock}"
}

# client over the unix socket as root (the OS root passes unix_socket auth)
sock_sql() {
  "$(client_bin)" --protocol=SOCKET -S "$(socket_path)" -uroot --connect-timeout=3 -N -B "$@"
}

# something answers on the socket or on the TCP port (even if it refuses our login)
server_alive() {
  local admin
  admin="$(admin_bin)" || return 1
  # `ping` exits 0 when the server runs, even when access is denied
  "$admin" --protocol=SOCKET -S "$(socket_path)" -uroot --connect-timeout=2 ping >/dev/null 2>&1 && return 0
  tcp_alive
}

# something answers on 127.0.0.1:MYSQL_PORT (even if it refuses our login)
tcp_alive() {
  "$(admin_bin)" --protocol=TCP -h127.0.0.1 -P"$MYSQL_PORT" -uroot --password= --connect-timeout=2 ping >/dev/null 2>&1
}

# the error log the server writes to (option files), or empty
error_log_path() {
  command -v my_print_defaults >/dev/null 2>&1 || return 0
  my_print_defaults mysqld 2>/dev/null | sed -n 's/^--log[-_]error=//p' | tail -n1
}

# ---------------------------------------------------------------- steps
install_packages() {
  if client_bin >/dev/null && server_bin >/dev/null; then return 0; fi
  [ "$(id -u)" = 0 ] || die "mariadb/mariadbd are not installed and this is not root: install mariadb-server and mariadb-client"
  command -v apt-get >/dev/null 2>&1 || die "mariadb/mariadbd are not installed and there is no apt-get"
  log "mariadb/mariadbd not found: installing mariadb-server mariadb-client from Debian"
  local t0=$SECONDS
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y mariadb-server mariadb-client </dev/null
  client_bin >/dev/null && server_bin >/dev/null || die "apt-get install finished but mariadb/mariadbd are still missing"
  log "installed in $((SECONDS - t0)) s"
}

start_server() {
  [ "$(id -u)" = 0 ] || die "no MariaDB server runs and starting one needs root"
  local server
  server="$(server_bin)"
  id mysql >/dev/null 2>&1 || die "there is no 'mysql' OS user (the mariadb-server package creates it)"
  mkdir -p "$RUNDIR"
  chown mysql:mysql "$RUNDIR"
  if [ ! -d "$DATADIR/mysql" ]; then
    log "initialising the data directory $DATADIR"
    mkdir -p "$DATADIR"
    chown mysql:mysql "$DATADIR"
    local installdb
    installdb="$(command -v mariadb-install-db || command -v mysql_install_db)" \
      || die "no mariadb-install-db to initialise $DATADIR"
    "$installdb" --user=mysql --datadir="$DATADIR" >/dev/null
    INITIALISED=1
  fi
  local args=(--user=mysql)
  [ "$MYSQL_PORT" = 3306 ] || args+=(--port="$MYSQL_PORT")
  local errlog
  errlog="$(error_log_path)"
  if [ -z "$errlog" ]; then
    # without a log-error option the server writes to stderr, which start-stop-daemon drops
    errlog=/var/log/mysql/error.log
    args+=(--log-error="$errlog")
  fi
  case "$errlog" in
    /*) mkdir -p "$(dirname "$errlog")"; chown mysql:mysql "$(dirname "$errlog")" 2>/dev/null || true ;;
  esac
  log "starting $server ${args[*]} (error log: $errlog)"
  start-stop-daemon --start --oknodo --background --exec "$server" -- "${args[@]}"

  local deadline=$((SECONDS + START_TIMEOUT))
  until tcp_ok || server_alive; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "the server did not answer within ${START_TIMEOUT} s; error log tail ($errlog):"
      [ -f "$errlog" ] && tail -n 30 "$errlog" >&2
      exit 1
    fi
    if ! pgrep -x "$(basename "$server")" >/dev/null 2>&1; then
      # give a just-forked server a moment before calling it dead
      sleep 1
      if ! pgrep -x "$(basename "$server")" >/dev/null 2>&1 && ! server_alive; then
        log "the server exited while starting; error log tail ($errlog):"
        [ -f "$errlog" ] && tail -n 30 "$errlog" >&2
        exit 1
      fi
    fi
    sleep 0.5
  done
  # it may answer on the socket a moment before it listens on TCP
  until tcp_alive || [ "$SECONDS" -ge "$deadline" ]; do sleep 0.5; done
  log "server is up"
  if [ "$INITIALISED" = 1 ]; then
    # mariadb-install-db creates anonymous accounts (''@localhost, ''@HOST); they shadow
    # 'user'@'%' logins from 127.0.0.1 that tests may create, so drop them
    sock_sql -e "SELECT CONCAT('DROP USER ''''@''', Host, ''';') FROM mysql.user WHERE User = '' AND is_role = 'N'" \
      | sock_sql || log "warning: could not drop the anonymous accounts"
  fi
}

fix_root_login() {
  tcp_ok && return 0
  log "root cannot log in over TCP with an empty password: fixing it over the unix socket"
  sock_sql -e 'select 1' >/dev/null 2>&1 \
    || die "cannot log in as root over the socket $(socket_path) either (is root's password set? is the server on port $MYSQL_PORT?)"
  # root@localhost keeps socket auth and also accepts an empty password; root@127.0.0.1 and
  # root@::1 are for TCP clients when the server does not map 127.0.0.1 to 'localhost'
  sock_sql <<'SQL'
ALTER USER 'root'@'localhost' IDENTIFIED VIA unix_socket OR mysql_native_password USING PASSWORD('');
CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY '';
ALTER USER 'root'@'127.0.0.1' IDENTIFIED BY '';
GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;
CREATE USER IF NOT EXISTS 'root'@'::1' IDENTIFIED BY '';
ALTER USER 'root'@'::1' IDENTIFIED BY '';
GRANT ALL PRIVILEGES ON *.* TO 'root'@'::1' WITH GRANT OPTION;
FLUSH PRIVILEGES;
SQL
  tcp_ok || die "still cannot log in as root over TCP 127.0.0.1:$MYSQL_PORT after fixing the accounts (bind-address / skip-networking / port in the server config?)"
  log "root@localhost and root@127.0.0.1 now accept an empty password"
}

cmd_ensure() {
  local t0=$SECONDS
  install_packages
  if tcp_ok; then
    log "server answers on 127.0.0.1:$MYSQL_PORT"
  else
    if server_alive; then
      log "a server runs but root cannot log in over TCP 127.0.0.1:$MYSQL_PORT"
    else
      log "no server answers: starting one"
      start_server
    fi
    fix_root_login
  fi
  local version
  version="$("$(client_bin)" --protocol=TCP -h127.0.0.1 -P"$MYSQL_PORT" -uroot --password= -N -B -e 'select version()')"
  log "ready in $((SECONDS - t0)) s: MariaDB $version on 127.0.0.1:$MYSQL_PORT (root, empty password)"
  echo "$version"
}

cmd_status() {
  if client_bin >/dev/null && tcp_ok; then
    echo "running: 127.0.0.1:$MYSQL_PORT ($("$(client_bin)" --protocol=TCP -h127.0.0.1 -P"$MYSQL_PORT" -uroot --password= -N -B -e 'select version()'))"
    return 0
  fi
  echo "not answering for root on 127.0.0.1:$MYSQL_PORT"
  return 3
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
[ $# -eq 0 ] || die "'$cmd' takes no options"
case "$cmd" in
  ensure) cmd_ensure ;;
  status) cmd_status ;;
  *) usage ;;
esac
