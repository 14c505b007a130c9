#!/usr/bin/env bash
# bench/routes.sh: custom routes. How fast a new route is served on another
# gateway of the cluster, and c64 throughput on a custom route with a route
# table of 1 and of 1,000 routes.
#
#   bash bench/routes.sh
#
# Builds release binaries (BUILD=0: use the built ones), creates a database of
# its own on the Postgres at $PG (default postgres://postgres@127.0.0.1:5432),
# starts a private nats-server (JetStream, store in a temporary folder),
# `picloud up` and a second `picloud gateway`, all on free loopback ports.
# Then:
#   1. `route-latency --n $TRIALS --poll <second gateway>` with 1 route;
#   2. wrk -t2 -c64 -d$DURATION on /hello/world (and /fn/hello) with 1 route;
#   3. fills the table to 1,000 routes, and runs 1 and 2 again.
# Stops what it started and drops the database on exit.

set -euo pipefail

DURATION=${DURATION:-10s}
TRIALS=${TRIALS:-20}
PG=${PG:-postgres://postgres@127.0.0.1:5432}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
if [[ ${BUILD:-1} == 1 ]]; then
    cargo build --release -p picloud -p picloud-bench
fi

ID=$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')
DB=picloud_routes_$ID
TOKEN=bench-token-$ID
DATA=$(mktemp -d /tmp/picloud-routes-bench-XXXXXX)
PIDS=()
cleanup() {
    local i
    # Last started, first stopped (the NATS server last).
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        kill -TERM "${PIDS[$i]}" 2>/dev/null || true
        wait "${PIDS[$i]}" 2>/dev/null || true
    done
    psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS $DB" >/dev/null 2>&1 || true
    rm -rf "$DATA"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_ready() { # url
    for _ in $(seq 1 300); do
        curl -fs "$1/readyz" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "error: $1 never became ready" >&2
    exit 1
}

psql "$PG/postgres" -qc "CREATE DATABASE $DB" >/dev/null
NATS_PORT=$(free_port)
nats-server -js -a 127.0.0.1 -p "$NATS_PORT" -sd "$DATA/nats" >"$DATA/nats.log" 2>&1 &
PIDS+=($!)
NATS=nats://127.0.0.1:$NATS_PORT
UP_PORT=$(free_port)
GW_PORT=$(free_port)
export PICLOUD_DATABASE_URL=$PG/$DB PICLOUD_NATS_URL=$NATS PICLOUD_PREFIX=rb$ID \
    PICLOUD_ADMIN_TOKEN=$TOKEN PICLOUD_DATA_DIR=$DATA RUST_LOG=${RUST_LOG:-warn}
PICLOUD_LISTEN=127.0.0.1:$UP_PORT "$BIN/picloud" up >"$DATA/up.log" 2>&1 &
PIDS+=($!)
UP=http://127.0.0.1:$UP_PORT
wait_ready "$UP"
PICLOUD_LISTEN=127.0.0.1:$GW_PORT "$BIN/picloud" gateway >"$DATA/gateway.log" 2>&1 &
PIDS+=($!)
GW=http://127.0.0.1:$GW_PORT
wait_ready "$GW"

curl -fs -X PUT "$UP/api/v1/scripts/hello" -H "Authorization: Bearer $TOKEN" \
    -d '{"source": "\"Hello, world!\"", "routes": ["GET /hello/:who"]}' >/dev/null

run() { # label
    local label=$1
    echo "== $label: route change, deploy on $UP, first 200 on $GW"
    "$BIN/route-latency" --base "$UP" --poll "$GW" --token "$TOKEN" --n "$TRIALS"
    for path in /hello/world /fn/hello; do
        curl -fs "$UP$path" >/dev/null
        echo "== $label: wrk -t2 -c64 -d$DURATION $path"
        wrk -t2 -c64 -d"$DURATION" --latency "$UP$path" | grep -E "Requests/sec|50%|99%|Non-2xx"
    done
}

run "1 route"
"$BIN/route-latency" --base "$UP" --token "$TOKEN" --n 0 --fill 1000
run "1000 routes"
