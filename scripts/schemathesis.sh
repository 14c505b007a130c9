#!/usr/bin/env bash
# Runs schemathesis (PyPI) against a live PiCloud: every operation of
# /api/v1/openapi.json with generated requests and the admin token. Fails
# (status 1) on a 5xx, a response that does not match the document (status,
# content type, schema, headers) or a request the document says is invalid
# that the server accepts.
#
# Called by scripts/test.sh with PICLOUD_TEST_DATABASE_URL and
# PICLOUD_TEST_NATS_URL set. Schemathesis is installed into a virtualenv
# outside the clone (PICLOUD_ST_VENV, default
# ${XDG_CACHE_HOME:-$HOME/.cache}/picloud-ci/venv) when missing.
# PICLOUD_ST_MAX_EXAMPLES bounds the examples per operation (default 25).
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${PICLOUD_ST_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/picloud-ci/venv}"
st_version="4.32.5"
if ! "$venv/bin/st" --version 2>/dev/null | grep -q "$st_version"; then
  echo "schemathesis: installing $st_version into $venv"
  mkdir -p "$(dirname "$venv")"
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    # Debian splits venv (and ensurepip) out of python3.
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv >/dev/null
    rm -rf "$venv"
    python3 -m venv "$venv"
  fi
  "$venv/bin/pip" install -q --disable-pip-version-check "schemathesis==$st_version"
fi

target="${CARGO_TARGET_DIR:-target}"
cargo build -q -p picloud
bin="$target/debug/picloud"

work=$(mktemp -d /tmp/picloud-st-XXXXXX)
chmod 755 "$work"
id=$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
db="picloud_test_st_${id}"
token="st-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
pid=""
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  psql "$PICLOUD_TEST_DATABASE_URL" -qtAc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

psql "$PICLOUD_TEST_DATABASE_URL" -qtAc "CREATE DATABASE \"$db\"" >/dev/null
db_url="${PICLOUD_TEST_DATABASE_URL%/*}/$db"
. scripts/ports.sh
port=$(free_port)
base="http://127.0.0.1:$port"
# METHOD PATH [JSON] -> prints the status (python3 only: curl may be missing).
call() {
  python3 - "$base" "$token" "$@" <<'PY'
import sys, urllib.request, urllib.error
base, token, method, path = sys.argv[1:5]
data = sys.argv[5].encode() if len(sys.argv) > 5 else None
req = urllib.request.Request(base + path, data=data, method=method)
req.add_header("Authorization", "Bearer " + token)
req.add_header("Content-Type", "application/json")
try:
    print(urllib.request.urlopen(req, timeout=10).status)
except urllib.error.HTTPError as e:
    print(e.code)
except OSError:
    print(0)
PY
}

PICLOUD_DATABASE_URL="$db_url" \
PICLOUD_NATS_URL="$PICLOUD_TEST_NATS_URL" \
PICLOUD_ADMIN_TOKEN="$token" \
PICLOUD_LISTEN="127.0.0.1:$port" \
PICLOUD_DATA_DIR="$work/data" \
PICLOUD_PREFIX="t${id:0:12}" \
RUST_LOG="${RUST_LOG:-warn}" \
  "$bin" up >"$work/picloud.log" 2>&1 &
pid=$!
ready=""
for _ in $(seq 300); do
  [ "$(call GET /readyz)" = 200 ] && { ready=1; break; }
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.2
done
[ -n "$ready" ] || { cat "$work/picloud.log"; echo "schemathesis: picloud up did not become ready"; exit 1; }

# Something to find: a script, a module, a secret, a schedule, a subscription.
seed() {
  local got
  got=$(call "$@")
  case "$got" in 2??) ;; *) echo "schemathesis: seeding $1 $2 answered $got"; exit 1 ;; esac
}
seed PUT /api/v1/scripts/hello '{"source": "`hello`"}'
seed PUT /api/v1/modules/util '{"source": "fn two() { 2 }"}'
seed PUT /api/v1/secrets/key '{"value": "s3cret"}'
seed POST /api/v1/schedules '{"script": "hello", "cron": "0 3 * * *"}'
seed POST /api/v1/subscriptions '{"script": "hello", "topic": "orders.*"}'

# The live-log endpoint is left out: with follow=true it answers a stream
# that never ends (tests/logs.rs covers it). No request may take 20 s.
# /metrics is documented; until this build serves it, it is left out.
exclude=()
if [ "$(call GET /metrics)" != 200 ]; then
  exclude=(--exclude-path /metrics)
fi

status=0
"$venv/bin/st" --config-file scripts/schemathesis.toml run "$base/api/v1/openapi.json" \
  --url "$base" \
  --header "Authorization: Bearer $token" \
  --checks all \
  --max-examples "${PICLOUD_ST_MAX_EXAMPLES:-25}" \
  --seed "${PICLOUD_ST_SEED:-1}" \
  --workers 2 \
  --generation-database none \
  --no-color \
  --request-timeout 20 \
  --exclude-path '/api/v1/scripts/{name}/logs' \
  "${exclude[@]}" || status=1
if ! kill -0 "$pid" 2>/dev/null; then
  echo "schemathesis: picloud up died during the run"
  status=1
fi
if grep -q "panicked" "$work/picloud.log"; then
  grep -B2 -A10 "panicked" "$work/picloud.log" | head -40
  echo "schemathesis: the server panicked"
  status=1
fi
exit "$status"
