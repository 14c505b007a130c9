#!/usr/bin/env bash
# The cost of /metrics (docs/PERFORMANCE.md, "Metrics"): c64 sync req/s on
# `picloud up` without and with a scraper that GETs /metrics every second,
# in alternating runs (A, B, A, B, ...), then the idle CPU of `picloud up`
# and its private NATS and Postgres over IDLE seconds, first with nobody
# scraping, then scraped every 15 s (Prometheus' default interval).
#
# Between the two it measures the server CPU of one scrape (SCRAPES, 500,
# in a row).
#
# Knobs: BIN (a release `picloud`; default target/release/picloud, built
# when BUILD=1), PAIRS (4), DURATION (10s), WARMUP (2s), IDLE (60),
# SCRAPES (500).
set -euo pipefail
cd "$(dirname "$0")/.."
PAIRS=${PAIRS:-4} DURATION=${DURATION:-10s} WARMUP=${WARMUP:-2s} IDLE=${IDLE:-60}
TARGET=${CARGO_TARGET_DIR:-target}
BIN=${BIN:-$TARGET/release/picloud}
[[ ${BUILD:-0} == 1 ]] && cargo build --release -p picloud
[[ -x $BIN ]] || { echo "no release binary at $BIN (BUILD=1 builds it)" >&2; exit 1; }

WORK=$(mktemp -d /tmp/picloud-metrics-cost-XXXXXX)
chmod 755 "$WORK"
PID=""
SCRAPER=""
cleanup() {
    [[ -n $SCRAPER ]] && kill "$SCRAPER" 2>/dev/null || true
    if [[ -n $PID ]]; then
        kill -TERM "$PID" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
BASE=http://127.0.0.1:$port
env -u PICLOUD_NATS_URL -u PICLOUD_DATABASE_URL -u PICLOUD_ADMIN_TOKEN \
    -u PICLOUD_CONFIG -u PICLOUD_PREFIX -u PICLOUD_WORKERS -u RUST_LOG \
    PICLOUD_LISTEN="127.0.0.1:$port" PICLOUD_DATA_DIR="$WORK/data" \
    "$BIN" up >"$WORK/picloud.log" 2>&1 &
PID=$!
for _ in $(seq 1200); do
    curl -sf --max-time 2 "$BASE/readyz" >/dev/null 2>&1 && break
    sleep 0.1
done
TOKEN=$(cat "$WORK/data/admin-token")
curl -sf -X PUT "$BASE/api/v1/scripts/hello" -H "Authorization: Bearer $TOKEN" \
    -H 'content-type: application/json' -d '{"source": "\"Hello, world!\""}' >/dev/null
for _ in $(seq 300); do
    [[ $(curl -s "$BASE/fn/hello") == "Hello, world!" ]] && break
    sleep 0.1
done

scrape_every() { # seconds
    while true; do curl -s --max-time 5 "$BASE/metrics" >/dev/null; sleep "$1"; done
}

# tree_ticks ROOT: CPU ticks of a process tree (here `picloud up` and its
# NATS, Postgres and Postgres backends).
. bench/lib.sh

run_wrk() { # label
    wrk -t2 -c64 -d"$WARMUP" "$BASE/fn/hello" >/dev/null
    local rps
    rps=$(wrk -t2 -c64 -d"$DURATION" "$BASE/fn/hello" | awk '/Requests\/sec/ {print $2}')
    echo "$1 $rps"
}

echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for ((i = 1; i <= PAIRS; i++)); do
    sleep 3
    run_wrk "pair $i without-scraper"
    sleep 3
    scrape_every 1 & SCRAPER=$!
    run_wrk "pair $i with-scraper"
    kill "$SCRAPER"; wait "$SCRAPER" 2>/dev/null || true; SCRAPER=""
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
curl -s "$BASE/metrics" | wc -c | awk '{print "metrics text: " $1 " bytes"}'

# What one scrape costs the server (CPU of picloud up, its NATS and its
# Postgres), from SCRAPES scrapes in a row: robust to a noisy machine,
# where wrk's req/s moves by more than the effect.
SCRAPES=${SCRAPES:-500}
sleep 5
a=$(tree_ticks "$PID")
started=$(date +%s%N)
for ((i = 0; i < SCRAPES; i++)); do curl -s "$BASE/metrics" >/dev/null; done
ended=$(date +%s%N)
b=$(tree_ticks "$PID")
awk -v t=$((b - a)) -v hz="$(getconf CLK_TCK)" -v n="$SCRAPES" -v ns=$((ended - started)) \
    'BEGIN { printf "scrape: %.2f ms server CPU each (%d scrapes, %.2f ms wall each)\n", 1000 * t / hz / n, n, ns / 1e6 / n }'

idle() { # label
    sleep 20 # records and relays settle
    local a b p0 p1
    a=$(tree_ticks "$PID") p0=$(own_ticks)
    sleep "$IDLE"
    b=$(tree_ticks "$PID") p1=$(own_ticks)
    awk -v t=$((b - a)) -v p=$((p1 - p0)) -v hz="$(getconf CLK_TCK)" -v s="$IDLE" -v l="$1" \
        'BEGIN { printf "idle %s, %d s: picloud %.3f%% of one core; with its NATS and Postgres %.3f%%\n", l, s, 100 * p / hz / s, 100 * t / hz / s }'
}
# CPU ticks of the picloud process alone.
own_ticks() { local rest; rest=$(cat "/proc/$PID/stat"); rest=${rest##*) }; awk '{print $12 + $13}' <<<"$rest"; }
idle "not scraped"
scrape_every 15 & SCRAPER=$!
idle "scraped every 15 s"
