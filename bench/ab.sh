#!/usr/bin/env bash
# bench/ab.sh: one events-bench run against a fresh `picloud up`, for A/B
# comparisons of two builds (run it alternately with each build's binaries).
#
#   bash bench/ab.sh BINDIR LABEL [JOBS]
#
# BINDIR holds release `picloud` and `events-bench` (e.g. copies of
# $CARGO_TARGET_DIR/release/{picloud,events-bench} of each build). Starts
# `picloud up` with a temporary PICLOUD_DATA_DIR on a free loopback port,
# waits for /readyz, runs `events-bench --jobs JOBS (1000) --concurrency 64`
# and prints its figures and picloud's peak RSS. Extra environment for
# `picloud up` (e.g. PICLOUD_SCRIPT_CONCURRENCY=2): EXTRA_ENV="NAME=value …".
# SYNC=1: instead of events-bench, deploy a hello script and run wrk on its
# sync endpoint, 10 s at -t1 -c1 then -t2 -c64 (after a 3 s warm-up each),
# printing requests/s, the p50 latency and the non-2xx answers; without it,
# the kv commit conflicts (re-runs) of the whole events-bench run after.
# ASYNC=1: instead, a steady async load: `wrk -t2 -c64 -d10s` with `Prefer:
# respond-async` on a trivial script, printing the calls accepted per
# second and, once the queue drained, the jobs finished per second from the
# first call to the last end (PERF_DATA=file: `perf record -a -g` into it
# during the 10 s).
# Everything it starts stops on exit.

set -euo pipefail

BIN=${1:?usage: bench/ab.sh BINDIR LABEL [JOBS]}
LABEL=${2:?usage: bench/ab.sh BINDIR LABEL [JOBS]}
JOBS=${3:-1000}
[[ -x $BIN/picloud && -x $BIN/events-bench ]] || { echo "no picloud/events-bench in $BIN" >&2; exit 1; }

WORK=$(mktemp -d /tmp/picloud-ab.XXXXXX)
# As root, `picloud up` runs Postgres as the postgres user, who must be able
# to walk into the data directory.
chmod 711 "$WORK"
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
BASE=http://127.0.0.1:$PORT

# shellcheck disable=SC2086 # EXTRA_ENV is a list of NAME=value words
env -u PICLOUD_NATS_URL -u PICLOUD_DATABASE_URL -u PICLOUD_ADMIN_TOKEN \
    -u PICLOUD_CONFIG -u PICLOUD_PREFIX -u PICLOUD_WORKERS -u RUST_LOG \
    PICLOUD_LISTEN="127.0.0.1:$PORT" PICLOUD_DATA_DIR="$WORK/data" ${EXTRA_ENV:-} \
    "$BIN/picloud" up >"$WORK/picloud.log" 2>&1 &
PID=$!
stop() {
    kill -TERM "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
    [[ -n ${KEEP_LOG:-} ]] && cp "$WORK/picloud.log" "$KEEP_LOG"
    rm -rf "$WORK"
}
trap stop EXIT

for ((i = 0; i < 1200; i++)); do
    curl -sf --max-time 2 "$BASE/readyz" >/dev/null 2>&1 && break
    kill -0 "$PID" 2>/dev/null || { tail -20 "$WORK/picloud.log" >&2; exit 1; }
    sleep 0.1
done
curl -sf --max-time 2 "$BASE/readyz" >/dev/null || { tail -20 "$WORK/picloud.log" >&2; exit 1; }
TOKEN=$(cat "$WORK/data/admin-token")
sleep 3
echo "=== $LABEL"
deploy_hello() {
    curl -sf --max-time 30 -X PUT "$BASE/api/v1/scripts/hello" \
        -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' \
        -d '{"source": "\"Hello, world!\""}' >/dev/null
    for ((i = 0; i < 300; i++)); do
        [[ $(curl -s --max-time 2 "$BASE/fn/hello") == "Hello, world!" ]] && break
        sleep 0.1
    done
}
# The hello script's finished async runs, from the metrics.
finished_async() {
    curl -sf --max-time 5 "$BASE/metrics" -H "Authorization: Bearer $TOKEN" |
        awk '/^picloud_invocations_total\{script="hello",trigger="http",outcome="ok"\}/ {n += $2} END {print n + 0}'
}
if [[ ${ASYNC:-0} == 1 ]]; then
    deploy_hello
    before=$(finished_async)
    PERF_PID=
    if [[ -n ${PERF_DATA:-} ]]; then
        perf record -a -g -F 499 -o "$PERF_DATA" -- sleep 10 >/dev/null 2>&1 &
        PERF_PID=$!
    fi
    start=$(date +%s.%N)
    wrk -t2 -c64 -d10s -H 'Prefer: respond-async' "$BASE/fn/hello" >"$WORK/wrk.txt"
    [[ -n $PERF_PID ]] && wait "$PERF_PID"
    # wrk counts the calls answered; the 64 in flight at its end may be
    # accepted too (and are then counted as finished).
    accepted=$(awk '/ requests in / {print $1}' "$WORK/wrk.txt")
    non2xx=$(awk '/Non-2xx/ {print $5}' "$WORK/wrk.txt")
    accepted=$((accepted - ${non2xx:-0}))
    # (The deploy check's sync calls are counted in `before`.)
    for ((i = 0; i < 1200; i++)); do
        done_now=$(finished_async)
        ((done_now - before >= accepted)) && break
        sleep 0.05
    done
    end=$(date +%s.%N)
    echo "async c64 10 s: $accepted accepted ($(awk -v n="$accepted" 'BEGIN {printf "%.0f", n / 10}')/s)," \
        "non-2xx ${non2xx:-0}; $((done_now - before)) finished in" \
        "$(awk -v a="$start" -v b="$end" 'BEGIN {printf "%.2f", b - a}') s:" \
        "$(awk -v a="$start" -v b="$end" -v n="$((done_now - before))" 'BEGIN {printf "%.0f", n / (b - a)}') jobs/s end to end"
elif [[ ${SYNC:-0} == 1 ]]; then
    deploy_hello
    for c in "1 1" "2 64"; do
        set -- $c
        wrk -t"$1" -c"$2" -d3s "$BASE/fn/hello" >/dev/null
        wrk -t"$1" -c"$2" -d10s --latency "$BASE/fn/hello" >"$WORK/wrk.txt"
        echo "sync c$2: $(awk '/^Requests\/sec/ {print $2}' "$WORK/wrk.txt") req/s," \
            "p50 $(awk '$1 == "50%" {print $2}' "$WORK/wrk.txt")," \
            "non-2xx $(awk '/Non-2xx/ {print $5}' "$WORK/wrk.txt")"
    done
else
    "$BIN/events-bench" --base "$BASE" --token "$TOKEN" --jobs "$JOBS" --concurrency 64
    echo "kv commit conflicts (re-runs): $(curl -sf --max-time 5 "$BASE/metrics" \
        -H "Authorization: Bearer $TOKEN" | awk '/^picloud_kv_commit_conflicts_total/ {print $2}')"
fi
echo "picloud up peak RSS: $(awk '/^VmHWM:/ {printf "%.0f MiB", $2 / 1024}' "/proc/$PID/status")"
