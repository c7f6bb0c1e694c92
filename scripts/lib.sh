# Shared helpers of the scripts in this folder; sourced, never run.
#
#   NAME=mariadb source scripts/lib.sh   then   log "…"; die "…"; usage
#
# usage prints the calling script's header: its leading comment block after the shebang.

log() { echo "${NAME:-script}: $*" >&2; }
die() {
  log "error: $*"
  exit 1
}

usage() {
  awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0" >&2
  exit 2
}

# process_cpu PID: the CPU seconds (user + system) process PID has used so far; 0 when it is
# unknown or gone (benchmarks measure the server's share with it)
process_cpu() {
  if [ -n "$1" ] && [ -r "/proc/$1/stat" ]; then
    awk -v hz="$(getconf CLK_TCK)" '{ print ($14 + $15) / hz }' "/proc/$1/stat"
  else
    echo 0
  fi
}

# something listens on 127.0.0.1:$1
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# a TCP port nothing listens on, outside the kernel's ephemeral range: the kernel hands those to
# outgoing connections, so one nothing listens on may still be bound when a server asks for it
# (CI saw "Bind on TCP/IP port ... Address already in use" on such a port)
free_port() {
  local p lo=32768 hi=60999 from=20000 to=32767
  read -r lo hi </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || true
  if [ "$lo" -gt 12000 ]; then from=10000; to=$((lo - 1)); else from=$((hi + 1)); to=65000; fi
  [ "$to" -gt "$from" ] || { from=20000; to=32767; }
  for _ in $(seq 50); do
    p=$((from + (RANDOM * 32768 + RANDOM) % (to - from + 1)))
    port_busy "$p" || { echo "$p"; return 0; }
  done
  die "no free port found"
}

# the MariaDB client and server binaries (10.5+ names, else the older mysql ones)
client_bin() {
  if command -v mariadb >/dev/null 2>&1; then echo mariadb
  elif command -v mysql >/dev/null 2>&1; then echo mysql
  else return 1; fi
}
server_bin() {
  if [ -x /usr/sbin/mariadbd ]; then echo /usr/sbin/mariadbd
  elif [ -x /usr/sbin/mysqld ]; then echo /usr/sbin/mysqld
  else return 1; fi
}

# installs Debian packages when the named command is missing: need CMD PACKAGE...
need() {
  local cmd="$1"
  shift
  command -v "$cmd" >/dev/null 2>&1 && return 0
  [ "$(id -u)" = 0 ] || die "$cmd is not installed and this is not root: install $*"
  command -v apt-get >/dev/null 2>&1 || die "$cmd is not installed and there is no apt-get: install $*"
  log "$cmd not found: installing $* from Debian"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" </dev/null >/dev/null
  command -v "$cmd" >/dev/null 2>&1 || die "installed $* but $cmd is still missing"
}

# make_test_tls DIR SAN: a test CA (DIR/ca.pem), a server certificate for SAN
# (DIR/server.pem, server-key.pem), a client certificate of the same CA (client.pem,
# client-key.pem) and a CA that signed nothing (other-ca.pem), made once with openssl.
make_test_tls() {
  local dir="$1" san="$2"
  [ -f "$dir/server-key.pem" ] && return 0
  need openssl openssl
  mkdir -p "$dir"
  (
    cd "$dir"
    openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=connector test CA" \
      -keyout ca-key.pem -out ca.pem 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout server-key.pem -out server.csr 2>/dev/null
    printf 'subjectAltName=%s\n' "$san" >san.ext
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 30 \
      -extfile san.ext -out server.pem 2>/dev/null
    # A client certificate of the same CA, for users that REQUIRE X509.
    openssl req -newkey rsa:2048 -nodes -subj "/CN=connector test client" -keyout client-key.pem \
      -out client.csr 2>/dev/null
    printf 'extendedKeyUsage=clientAuth\n' >client.ext
    openssl x509 -req -in client.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 30 -extfile client.ext \
      -out client.pem 2>/dev/null
    # A second CA that signed nothing here: "a wrong CA" for the TLS tests.
    openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=another CA" \
      -keyout other-ca-key.pem -out other-ca.pem 2>/dev/null
    chmod 600 ./*-key.pem
  )
}
