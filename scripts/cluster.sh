#!/usr/bin/env bash
# The whole PiCloud cluster as local processes on loopback ports: the same
# topology as compose.yaml, without containers. The failure suite
# (scripts/failure-suite.sh) drives it; an operator can try a cluster on one
# machine with it.
#
#   scripts/cluster.sh up                 start everything (idempotent)
#   scripts/cluster.sh down               stop everything (SIGTERM, drains)
#   scripts/cluster.sh status             each process: pid, alive, ready
#   scripts/cluster.sh kill ROLE N        kill -9 one process
#   scripts/cluster.sh stop ROLE N        SIGTERM one process, wait for its exit
#   scripts/cluster.sh start ROLE N       start one process (no-op if running)
#   scripts/cluster.sh restart ROLE N     stop, then start
#   scripts/cluster.sh env                the variables a client needs
#   scripts/cluster.sh secrets DIR        write NATS credentials and a
#                                         development CA into DIR (compose.yaml
#                                         reads ./secrets; `up` uses its own)
#
# ROLE: nats (N 1-3), postgres (N 1), manager, gateway, executor (N 1-2),
# caddy (N 1). Processes:
#
#   nats 1-3       nats/cluster/nN.conf, a 3-node JetStream cluster
#   postgres 1     a private cluster (initdb) in the run directory, unless
#                  PICLOUD_CLUSTER_DATABASE_URL names a server (its
#                  `picloud_cluster` database is then used; not stopped)
#   manager 1-2    picloud manager    (admin API, relay, scheduler)
#   gateway 1-2    picloud gateway    (/fn, /status)
#   executor 1-2   picloud executor   (runs scripts)
#   caddy 1        caddy/Caddyfile in front: admin origin and scripts' origin
#
# Settings (environment):
#   PICLOUD_CLUSTER_DIR   run directory: pids/, logs/, data (default
#                         ${TMPDIR:-/tmp}/picloud-cluster)
#   PICLOUD_CLUSTER_PORT  base port (default 19000): Caddy base+80 (admin)
#                         and base+81 (scripts), managers base+101.., gateways
#                         base+201.., executors base+301.., NATS clients
#                         base+11..13, Postgres base+40
#   PICLOUD_BIN           the picloud binary (default: cargo build --release)
#   PICLOUD_CLUSTER_EXECUTORS  executors started by `up` (default 2)
#   PICLOUD_CLUSTER_PIN   set: executor N runs on CPU N-1 only (taskset)
#   Other PICLOUD_* variables (workers, retry delays, …) reach every role.
#
# Every process runs in its own session (setsid), its pid in pids/NAME.pid
# and its output in logs/NAME.log (appended across restarts).
#
# NATS is secured as in production (docs/operations.md): client and route
# connections are TLS with a development CA (`picloud dev-certs`, in
# secrets/), and each role connects as its own NATS user (picloud-ROLE, the
# permissions of nats/picloud-users.conf) with a random password that `up`
# writes to secrets/nats-ROLE-password (mode 0600) and hands over as
# PICLOUD_NATS_PASSWORD_FILE: no credential is on a command line.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
run=${PICLOUD_CLUSTER_DIR:-${TMPDIR:-/tmp}/picloud-cluster}
base=${PICLOUD_CLUSTER_PORT:-19000}
mkdir -p "$run/pids" "$run/logs" "$run/data"
chmod 755 "$run"

die() { echo "cluster: $*" >&2; exit 1; }
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
pgbin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

nats_port() { echo $((base + 10 + $1)); }
route_port() { echo $((base + 20 + $1)); }
monitor_port() { echo $((base + 30 + $1)); }
pg_port() { echo $((base + 40)); }
port_of() { # ROLE N -> its HTTP port
  case $1 in
    manager) echo $((base + 100 + $2)) ;;
    gateway) echo $((base + 200 + $2)) ;;
    executor) echo $((base + 300 + $2)) ;;
    caddy) echo $((base + 80)) ;;
    nats) monitor_port "$2" ;;
    postgres) pg_port ;;
  esac
}

binary() {
  if [ -n "${PICLOUD_BIN:-}" ]; then echo "$PICLOUD_BIN"; return; fi
  (cd "$repo" && cargo build --release -q -p picloud) >&2
  echo "${CARGO_TARGET_DIR:-$repo/target}/release/picloud"
}

database_url() {
  if [ -n "${PICLOUD_CLUSTER_DATABASE_URL:-}" ]; then
    echo "${PICLOUD_CLUSTER_DATABASE_URL%/*}/picloud_cluster"
  else
    echo "postgres://postgres@127.0.0.1:$(pg_port)/picloud"
  fi
}

# The NATS URL list, starting at node $1 so roles spread over the nodes.
nats_urls() {
  local first=$1 i urls=()
  for i in 0 1 2; do urls+=("nats://127.0.0.1:$(nats_port $(((first - 1 + i) % 3 + 1)))"); done
  (IFS=,; echo "${urls[*]}")
}

token() {
  [ -s "$run/admin-token" ] || (umask 077; head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$run/admin-token")
  cat "$run/admin-token"
}
# Writes what a secured cluster needs into $1, keeping what is there: the
# development CA and certificates (picloud dev-certs) and one random NATS
# password per role, every secret mode 0600.
write_secrets() {
  local dir=$1 role
  mkdir -p "$dir"
  chmod 700 "$dir"
  [ -s "$dir/certs/ca.pem" ] || "$(binary)" dev-certs "$dir/certs" 2>/dev/null ||
    die "picloud dev-certs $dir/certs failed"
  for role in gateway executor manager; do
    # A leading letter: nats-server parses an unquoted value it reads from
    # the environment, and an all-digit one would become a number.
    [ -s "$dir/nats-$role-password" ] ||
      (umask 077; echo "pw$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')" >"$dir/nats-$role-password")
  done
}
secrets_key() {
  [ -s "$run/secrets-key" ] || (umask 077; head -c 32 /dev/urandom | base64 >"$run/secrets-key")
  cat "$run/secrets-key"
}

pid_of() { cat "$run/pids/$1.pid" 2>/dev/null || true; }
alive() { local p; p=$(pid_of "$1"); [ -n "$p" ] && kill -0 "$p" 2>/dev/null; }

# Waits up to $2 seconds for command "$3..." to succeed. With `watch=NAME`
# set, gives up at once (with the end of its log) if process NAME exits.
wait_for() {
  local what=$1 secs=$2 i
  shift 2
  for i in $(seq $((secs * 10))); do
    "$@" >/dev/null 2>&1 && return 0
    if [ -n "${watch:-}" ] && ! alive "$watch"; then
      echo "cluster: $what exited; the end of $run/logs/$watch.log:" >&2
      tail -n 5 "$run/logs/$watch.log" >&2
      exit 1
    fi
    sleep 0.1
  done
  die "$what not ready after ${secs}s (logs in $run/logs)"
}
ready() { curl -fsS -m 2 "http://127.0.0.1:$(port_of "$1" "$2")/readyz"; }
nats_ready() { curl -fsS -m 2 "http://127.0.0.1:$(monitor_port "$1")/healthz?js-enabled-only=true"; }

# Starts "$@" detached as process NAME ($1).
spawn() {
  local name=$1
  shift
  echo "---- start $(date -u +%FT%T.%3NZ)" >>"$run/logs/$name.log"
  setsid "$@" </dev/null >>"$run/logs/$name.log" 2>&1 &
  echo $! >"$run/pids/$name.pid"
}

start_nats() {
  local n=$1
  alive "nats$n" && return 0
  mkdir -p "$run/data/nats$n"
  NATS_HOST=127.0.0.1 NATS_PORT=$(nats_port "$n") NATS_CLUSTER_PORT=$(route_port "$n") \
    NATS_MONITOR_PORT=$(monitor_port "$n") NATS_STORE_DIR="$run/data/nats$n" \
    NATS_ROUTE_1="nats-route://127.0.0.1:$(route_port 1)" \
    NATS_ROUTE_2="nats-route://127.0.0.1:$(route_port 2)" \
    NATS_ROUTE_3="nats-route://127.0.0.1:$(route_port 3)" \
    NATS_TLS_CERT="$run/secrets/certs/server.pem" NATS_TLS_KEY="$run/secrets/certs/server-key.pem" \
    NATS_TLS_CA="$run/secrets/certs/ca.pem" NATS_SECRETS_DIR="$run/secrets" \
    NATS_SERVER="$(command -v nats-server || echo /usr/sbin/nats-server)" \
    spawn "nats$n" sh "$repo/nats/cluster/start.sh" -c "$repo/nats/cluster/n$n.conf"
}

start_postgres() {
  if [ -n "${PICLOUD_CLUSTER_DATABASE_URL:-}" ]; then
    psql "$PICLOUD_CLUSTER_DATABASE_URL" -qtAc "SELECT 1 FROM pg_database WHERE datname = 'picloud_cluster'" | grep -q 1 ||
      psql "$PICLOUD_CLUSTER_DATABASE_URL" -qc "CREATE DATABASE picloud_cluster" >/dev/null
    return 0
  fi
  alive postgres1 && return 0
  local dir="$run/data/postgres" bin
  bin=$(pgbin)
  [ -n "$bin" ] || die "no PostgreSQL server found (scripts/setup.sh installs it)"
  if [ ! -f "$dir/PG_VERSION" ]; then
    mkdir -p "$dir"
    [ "$(id -u)" -ne 0 ] || chown postgres: "$dir"
    chmod 700 "$dir"
    as_pg "$bin/initdb" -D "$dir" --auth=trust --username=postgres >>"$run/logs/postgres1.log" 2>&1
  fi
  # Postgres runs in the foreground of its own session; the pid kept is the
  # postmaster's (from postmaster.pid), so `kill -9` is a real crash.
  local cmd=("$bin/postgres" -D "$dir" -c listen_addresses=127.0.0.1 -p "$(pg_port)"
    -k "$dir" -c max_connections=200)
  [ "$(id -u)" -ne 0 ] || cmd=(runuser -u postgres -- "${cmd[@]}")
  rm -f "$dir/postmaster.pid"
  spawn postgres1 "${cmd[@]}"
  wait_for "postgres" 30 psql "postgres://postgres@127.0.0.1:$(pg_port)/postgres" -qtAc 'SELECT 1'
  psql "postgres://postgres@127.0.0.1:$(pg_port)/postgres" -qtAc "SELECT 1 FROM pg_database WHERE datname = 'picloud'" | grep -q 1 ||
    psql "postgres://postgres@127.0.0.1:$(pg_port)/postgres" -qc "CREATE DATABASE picloud" >/dev/null
  head -n 1 "$dir/postmaster.pid" >"$run/pids/postgres1.pid"
}

start_role() { # ROLE N
  local role=$1 n=$2 name="$1$2"
  alive "$name" && return 0
  mkdir -p "$run/data/$name"
  local certs="$run/secrets/certs"
  local env=(PICLOUD_LISTEN="127.0.0.1:$(port_of "$role" "$n")"
    PICLOUD_NATS_URL="$(nats_urls $(((n + ${#role}) % 3 + 1)))"
    PICLOUD_DATA_DIR="$run/data/$name"
    PICLOUD_NATS_USER="picloud-$role" PICLOUD_NATS_PASSWORD_FILE="$run/secrets/nats-$role-password"
    PICLOUD_NATS_CA="$certs/ca.pem" PICLOUD_NATS_CERT="$certs/$role.pem" PICLOUD_NATS_KEY="$certs/$role-key.pem"
    PICLOUD_NATS_TLS=true)
  if [ "$role" = manager ]; then
    env+=(PICLOUD_DATABASE_URL="$(database_url)" PICLOUD_ADMIN_TOKEN="$(token)"
      PICLOUD_SECRETS_KEY="$(secrets_key)")
  fi
  local pin=()
  if [ "$role" = executor ] && [ -n "${PICLOUD_CLUSTER_PIN:-}" ]; then
    pin=(taskset -c $(((n - 1) % $(nproc))))
  fi
  local bin
  bin=$(binary)
  echo "---- start $(date -u +%FT%T.%3NZ)" >>"$run/logs/$name.log"
  # Exported in a subshell, not passed to env(1): the admin token and the
  # secrets key stay off every command line.
  (export "${env[@]}"; exec setsid "${pin[@]}" "$bin" "$role") </dev/null >>"$run/logs/$name.log" 2>&1 &
  echo $! >"$run/pids/$name.pid"
}

start_caddy() {
  alive caddy1 && return 0
  command -v caddy >/dev/null || die "caddy is not installed (apt-get install caddy)"
  PICLOUD_SITE=":$((base + 80))" PICLOUD_FN_SITE=":$((base + 81))" CADDY_ADMIN="127.0.0.1:$((base + 90))" \
    PICLOUD_GATEWAY_1="127.0.0.1:$(port_of gateway 1)" PICLOUD_GATEWAY_2="127.0.0.1:$(port_of gateway 2)" \
    PICLOUD_MANAGER_1="127.0.0.1:$(port_of manager 1)" PICLOUD_MANAGER_2="127.0.0.1:$(port_of manager 2)" \
    XDG_DATA_HOME="$run/data/caddy" XDG_CONFIG_HOME="$run/data/caddy" \
    spawn caddy1 caddy run --adapter caddyfile --config "$repo/caddy/Caddyfile"
}

start_one() { # ROLE N, and waits until it is ready
  case $1 in
    nats) start_nats "$2"; wait_for "nats $2" 30 nats_ready "$2" ;;
    postgres) start_postgres ;;
    manager | gateway | executor) start_role "$1" "$2"; watch="$1$2" wait_for "$1 $2" 60 ready "$1" "$2" ;;
    caddy) start_caddy; wait_for caddy 30 curl -fsS -m 2 "http://127.0.0.1:$((base + 80))/api/v1/openapi.json" ;;
    *) die "unknown role $1 (nats, postgres, manager, gateway, executor, caddy)" ;;
  esac
}

# SIGTERM (or $2) and wait for the exit; past 90 s, SIGKILL.
stop_name() {
  local name=$1 sig=${2:-TERM} p i
  p=$(pid_of "$name")
  [ -n "$p" ] || return 0
  if kill -0 "$p" 2>/dev/null; then
    kill "-$sig" "$p" 2>/dev/null || true
    for i in $(seq 900); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$p" 2>/dev/null && kill -9 "$p" 2>/dev/null || true
    for i in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f "$run/pids/$name.pid"
}

names() { # every process, in start order
  echo nats1 nats2 nats3
  [ -n "${PICLOUD_CLUSTER_DATABASE_URL:-}" ] || echo postgres1
  echo manager1 manager2 gateway1 gateway2
  local i
  for i in $(seq "${PICLOUD_CLUSTER_EXECUTORS:-2}"); do echo "executor$i"; done
  echo caddy1
}

cmd=${1:-}
case $cmd in
  up)
    [ "${PICLOUD_PREFIX:-picloud}" = picloud ] ||
      die "PICLOUD_PREFIX must be picloud here: nats/picloud-users.conf names the users picloud-ROLE"
    write_secrets "$run/secrets"
    for n in 1 2 3; do start_nats "$n"; done
    for n in 1 2 3; do wait_for "nats $n" 30 nats_ready "$n"; done
    start_postgres
    # The first manager creates the schema; the others start after it.
    start_one manager 1
    start_role manager 2
    start_role gateway 1
    start_role gateway 2
    for n in $(seq "${PICLOUD_CLUSTER_EXECUTORS:-2}"); do start_role executor "$n"; done
    start_caddy
    for name in manager2 gateway1 gateway2 $(seq -f 'executor%g' "${PICLOUD_CLUSTER_EXECUTORS:-2}"); do
      role=${name%[0-9]}
      watch=$name wait_for "$name" 60 ready "$role" "${name#"$role"}"
    done
    start_one caddy 1
    echo "cluster up in $run: http://127.0.0.1:$((base + 80)) (admin, /fn) and http://127.0.0.1:$((base + 81)) (/fn only)"
    echo "admin token: $run/admin-token"
    ;;
  down)
    # Ingress first, then the roles (they drain), then the servers.
    for name in caddy1 gateway1 gateway2 $(ls "$run/pids" 2>/dev/null | sed -n 's/^\(executor[0-9]*\)\.pid$/\1/p') manager1 manager2; do
      stop_name "$name" &
    done
    wait
    stop_name postgres1 INT
    for n in 1 2 3; do stop_name "nats$n" & done
    wait
    echo "cluster down (data kept in $run/data; rm -rf $run to start afresh)"
    ;;
  status)
    for name in $(names) $(ls "$run/pids" 2>/dev/null | sed -n 's/^\(executor[3-9]\)\.pid$/\1/p'); do
      role=${name%[0-9]}
      n=${name#"$role"}
      state=down
      if alive "$name"; then
        state=running
        case $role in
          nats) nats_ready "$n" >/dev/null 2>&1 && state=ready ;;
          postgres) psql "postgres://postgres@127.0.0.1:$(pg_port)/postgres" -qtAc 'SELECT 1' >/dev/null 2>&1 && state=ready ;;
          caddy) curl -fsS -m 2 "http://127.0.0.1:$((base + 80))/api/v1/openapi.json" >/dev/null 2>&1 && state=ready ;;
          *) ready "$role" "$n" >/dev/null 2>&1 && state=ready ;;
        esac
      fi
      printf '%-10s %-8s %-8s port %s\n' "$name" "$(pid_of "$name")" "$state" "$(port_of "$role" "$n")"
    done
    ;;
  kill | stop | start | restart)
    [ $# -eq 3 ] || die "usage: $0 $cmd ROLE N"
    role=$2
    n=$3
    case $cmd in
      kill)
        p=$(pid_of "$role$n")
        [ -n "$p" ] || die "$role$n is not running"
        kill -9 "$p" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        rm -f "$run/pids/$role$n.pid"
        ;;
      stop) stop_name "$role$n" "$([ "$role" = postgres ] && echo INT || echo TERM)" ;;
      start) start_one "$role" "$n" ;;
      restart)
        stop_name "$role$n" "$([ "$role" = postgres ] && echo INT || echo TERM)"
        start_one "$role" "$n"
        ;;
    esac
    ;;
  env)
    echo "PICLOUD_URL=http://127.0.0.1:$((base + 80))"
    echo "PICLOUD_FN_URL=http://127.0.0.1:$((base + 81))"
    echo "PICLOUD_TOKEN=$(token)"
    echo "PICLOUD_DATABASE_URL=$(database_url)"
    echo "PICLOUD_NATS_URL=$(nats_urls 1)"
    echo "PICLOUD_NATS_CA=$run/secrets/certs/ca.pem"
    ;;
  secrets)
    [ $# -eq 2 ] || die "usage: $0 secrets DIR"
    write_secrets "$2"
    echo "wrote the NATS passwords and a development CA into $2 (keep it private)"
    ;;
  *)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    [ -z "$cmd" ] || exit 2
    ;;
esac
