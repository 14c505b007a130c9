#!/usr/bin/env bash
# Runs every check and test: the dashboard's checks (scripts/dashboard.sh),
# formatting, clippy, all tests against a real Postgres and a real NATS
# JetStream server, schemathesis against a live instance
# (scripts/schemathesis.sh), then the dashboard end to end in chromium
# (dashboard/e2e/run.mjs; PICLOUD_TEST_NO_E2E=1 skips it).
#
# Servers: PICLOUD_TEST_DATABASE_URL and PICLOUD_TEST_NATS_URL when set;
# otherwise the local ones on 127.0.0.1:5432 / 4222 when they answer (trust
# login, JetStream on); otherwise private ones started here on free ports and
# stopped on exit. Each test makes its own database and NATS prefix, so tests
# run in parallel and leave nothing behind.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# Installs a Debian package (without its recommends) and says why.
apt_install() {
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing: $1 ($2)"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$1" >/dev/null
}
# promtool validates every role's /metrics (services/picloud/tests/metrics.rs
# fails without it, unless PICLOUD_TEST_NO_PROMTOOL=1). Debian ships it in
# the `prometheus` package.
if ! command -v promtool >/dev/null 2>&1 && [ "${PICLOUD_TEST_NO_PROMTOOL:-}" != 1 ]; then
  apt_install prometheus "for promtool"
fi
# The dashboard's end-to-end run drives Debian's chromium (playwright-core
# cannot download a browser in CI).
if ! command -v chromium >/dev/null 2>&1 && [ "${PICLOUD_TEST_NO_E2E:-}" != 1 ]; then
  apt_install chromium "for the dashboard's end-to-end run"
fi

# The cluster packaging is validated, not run, here (images cannot be pulled
# in CI): caddy/Caddyfile with `caddy validate`, compose.yaml with
# `docker-compose config` (Debian packages `caddy`, `docker-compose`).
# scripts/cluster.sh runs the same topology as local processes.
for tool in caddy docker-compose; do
  command -v "$tool" >/dev/null 2>&1 || apt_install "$tool" "to validate the cluster packaging"
done

# cargo-machete finds dependencies that nothing uses (issue #18).
if ! command -v cargo-machete >/dev/null 2>&1; then
  echo "installing: cargo-machete"
  cargo install --locked cargo-machete >/dev/null
fi

work=$(mktemp -d /tmp/picloud-test-XXXXXX)
chmod 755 "$work"
pids=()
cleanup() {
  for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  if [ -f "$work/pg/postmaster.pid" ]; then
    pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
    as_pg "$pgbin/pg_ctl" -D "$work/pg" -m immediate stop >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
. scripts/ports.sh

# ---- Postgres ---------------------------------------------------------------
if [ -z "${PICLOUD_TEST_DATABASE_URL:-}" ]; then
  local_url="postgres://postgres@127.0.0.1:${PICLOUD_TEST_LOCAL_PG_PORT:-5432}/postgres"
  if PGCONNECT_TIMEOUT=3 psql "$local_url" -qtAc 'SELECT 1' >/dev/null 2>&1; then
    export PICLOUD_TEST_DATABASE_URL="$local_url"
  else
    echo "no usable Postgres on 127.0.0.1:5432: starting a private one"
    pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
    port=$(free_port)
    mkdir -p "$work/pg"
    if [ "$(id -u)" -eq 0 ]; then chown postgres: "$work/pg"; fi
    as_pg "$pgbin/initdb" -D "$work/pg" --auth=trust --username=postgres >/dev/null
    as_pg "$pgbin/pg_ctl" -D "$work/pg" -l "$work/pg/log" -w \
      -o "-c listen_addresses=127.0.0.1 -p $port -k $work/pg -c max_connections=300" start >/dev/null
    export PICLOUD_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
  fi
fi
# Databases of earlier, interrupted runs.
psql "$PICLOUD_TEST_DATABASE_URL" -qtAc \
  "SELECT 'DROP DATABASE \"' || datname || '\" WITH (FORCE);' FROM pg_database WHERE datname LIKE 'picloud_test_%'" \
  | psql "$PICLOUD_TEST_DATABASE_URL" -q >/dev/null 2>&1 || true

# ---- NATS -------------------------------------------------------------------
jetstream_at() { # host port -> success when a NATS server with JetStream answers
  timeout 3 bash -c "exec 3<>/dev/tcp/$1/$2; head -n 1 <&3" 2>/dev/null | grep -q '"jetstream":true'
}
if [ -z "${PICLOUD_TEST_NATS_URL:-}" ]; then
  if jetstream_at 127.0.0.1 "${PICLOUD_TEST_LOCAL_NATS_PORT:-4222}"; then
    export PICLOUD_TEST_NATS_URL="nats://127.0.0.1:${PICLOUD_TEST_LOCAL_NATS_PORT:-4222}"
  else
    echo "no NATS with JetStream on 127.0.0.1:4222: starting a private one"
    nats=$(command -v nats-server || echo /usr/sbin/nats-server)
    port=$(free_port)
    "$nats" -a 127.0.0.1 -p "$port" -js -sd "$work/nats" >"$work/nats.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 100); do jetstream_at 127.0.0.1 "$port" && break; sleep 0.1; done
    export PICLOUD_TEST_NATS_URL="nats://127.0.0.1:$port"
  fi
fi
echo "tests use Postgres at $PICLOUD_TEST_DATABASE_URL and NATS at $PICLOUD_TEST_NATS_URL"

if [ "${PICLOUD_TEST_SERVERS_ONLY:-}" = 1 ]; then
  psql "$PICLOUD_TEST_DATABASE_URL" -qtAc 'SELECT version()'
  jetstream_at 127.0.0.1 "${PICLOUD_TEST_NATS_URL##*:}" && echo "NATS JetStream answers"
  exit 0
fi

# ---- checks and tests -------------------------------------------------------
# Every step runs to the end, and the closing line is printed whatever
# happened; the exit status says whether anything failed.
status=0
# Built first: the manager's tests and the e2e run serve dashboard/build.
dashboard="dashboard: svelte-check, vitest, API types and bundle budget pass"
scripts/dashboard.sh check 2>&1 | tee "$work/dashboard.log" || {
  status=1
  dashboard="dashboard: FAILED (build, stale API types, svelte-check, vitest or bundle budget; see above)"
}
cargo fmt --all --check || { status=1; echo "checks: cargo fmt --check failed"; }
caddy validate --adapter caddyfile --config caddy/Caddyfile >/dev/null 2>"$work/caddy.log" ||
  { status=1; cat "$work/caddy.log"; echo "checks: caddy validate caddy/Caddyfile failed"; }
PICLOUD_ADMIN_TOKEN=check PICLOUD_SECRETS_KEY=check docker-compose -f compose.yaml config -q ||
  { status=1; echo "checks: docker-compose config (compose.yaml) failed"; }
cargo clippy --workspace --all-targets -- -D warnings || { status=1; echo "checks: clippy failed"; }
cargo machete || { status=1; echo "checks: cargo machete found unused dependencies"; }
cargo test --workspace --no-fail-fast 2>&1 | tee "$work/test.log" || status=1
# The failure suite: the whole cluster as local processes (scripts/cluster.sh),
# a mixed load through Caddy, one fault at a time (docs/RELIABILITY.md).
reliability="failure suite: nothing lost or duplicated under every fault"
scripts/failure-suite.sh 2>&1 | tee "$work/failure-suite.log" || {
  status=1
  reliability="failure suite: FAILED (see its table above; logs of every process kept)"
}
# The HTTP contract: schemathesis against a live `picloud up` (see the script).
contract="schemathesis: every response matches the OpenAPI document"
scripts/schemathesis.sh 2>&1 | tee "$work/schemathesis.log" || {
  status=1
  contract="schemathesis: FAILED (a 5xx, or a response or request the OpenAPI document does not allow; see above)"
}
# The dashboard end to end: chromium against the debug `picloud up` the
# tests built (dashboard/e2e/run.mjs).
e2e="e2e: dashboard end-to-end passed"
if [ "${PICLOUD_TEST_NO_E2E:-}" = 1 ]; then
  e2e="e2e: skipped (PICLOUD_TEST_NO_E2E=1)"
else
  cargo build -q -p picloud
  (cd dashboard && node e2e/run.mjs) 2>&1 | tee "$work/e2e.log" || {
    status=1
    e2e="e2e: FAILED (dashboard end-to-end; see the e2e lines above)"
  }
fi
# One closing line for the whole run (cargo prints one per test binary). A
# test binary that crashed (a signal, an abort) prints cargo's "test failed"
# error without a FAILED result line: each such binary counts as one failure,
# and so does each crate whose tests did not compile.
awk '/^test result:/ { p += $4; f += $6; i += $8; if ($3 == "FAILED.") r++ }
     /^error: test failed, to rerun pass/ { e++ }
     /^error: could not compile/ { c++ }
     END { if (e > r) f += e - r
           f += c
           printf "tests: %d passed, %d failed, %d skipped\n", p, f, i }' "$work/test.log"
echo "$contract"
echo "$dashboard"
echo "$e2e"
echo "$reliability"
exit "$status"
