#!/usr/bin/env bash
# bench/log-follower.sh: what one live-log follower costs the c64 sync figure.
#
#   bash bench/log-follower.sh
#
# Starts `picloud up` (release build, private NATS and Postgres under a
# temporary PICLOUD_DATA_DIR), deploys `hello-log` (logs one line, answers
# "Hello, world!"), then alternates c64 wrk runs without and with a follower
# of its live log (`curl -N …/api/v1/scripts/hello-log/logs?follow=true`,
# output counted and discarded). Prints every run's req/s and the CPU time
# PiCloud (its process tree: picloud, NATS, Postgres) spent per request, and
# the medians. Then the follower's own cost, without traffic to blur it: a
# follower replays the last round's lines from the stream (Last-Event-ID)
# while nothing else runs, and the CPU PiCloud spends per line it delivers
# is set beside the CPU per request. CPU per request is the steadier figure on a shared machine:
# other processes' load moves req/s by ±15 % between runs, but much less the
# work PiCloud itself does for each request; at saturation req/s is cores
# divided by it.
#
# Knobs: ROUNDS (3), DURATION (10s), WARMUP (2s), BUILD=0 (use the built
# binary), KEEP=1 (keep the work directory).

set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

PIDS=()
WORK=""
cleanup() {
    local status=$? pid
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    if [[ -n $WORK && -d $WORK && ${KEEP:-0} != 1 ]]; then rm -rf "$WORK"; fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

command -v wrk >/dev/null || die "wrk is not installed (apt-get install -y wrk)"
if [[ ${BUILD:-1} == 1 ]]; then
    log "building (release)"
    cargo build --release -p picloud
fi
[[ -x $BIN/picloud ]] || die "no release binary in $BIN"

WORK=$(mktemp -d /tmp/picloud-follow.XXXXXX)
chmod 711 "$WORK"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
BASE=http://127.0.0.1:$PORT
log "starting picloud up on $BASE"
env -u PICLOUD_NATS_URL -u PICLOUD_DATABASE_URL -u PICLOUD_ADMIN_TOKEN \
    -u PICLOUD_CONFIG -u PICLOUD_PREFIX -u PICLOUD_WORKERS -u RUST_LOG \
    PICLOUD_LISTEN="127.0.0.1:$PORT" PICLOUD_DATA_DIR="$WORK/data" \
    "$BIN/picloud" up >"$WORK/picloud.log" 2>&1 &
PICLOUD_PID=$!
PIDS+=("$PICLOUD_PID")
for _ in $(seq 1 1200); do
    curl -sf --max-time 2 "$BASE/readyz" >/dev/null 2>&1 && break
    kill -0 "$PICLOUD_PID" 2>/dev/null || { tail -20 "$WORK/picloud.log" >&2; die "picloud up exited"; }
    sleep 0.1
done
curl -sf --max-time 2 "$BASE/readyz" >/dev/null || die "picloud not ready in 120s"
TOKEN=$(cat "$WORK/data/admin-token")
curl -sf --max-time 30 -X PUT "$BASE/api/v1/scripts/hello-log" \
    -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' \
    -d '{"source": "log(\"hit\"); \"Hello, world!\""}' >/dev/null || die "deploy failed"
for _ in $(seq 1 300); do
    [[ $(curl -s --max-time 2 "$BASE/fn/hello-log") == "Hello, world!" ]] && break
    sleep 0.1
done

# tree_ticks ROOT: CPU ticks of `picloud up` and its children (NATS, Postgres).
. bench/lib.sh
# Until PiCloud uses < 5% of a core over a second (records of the last run
# stored), at most 90 s.
wait_quiet() {
    local a b
    for _ in $(seq 1 90); do
        a=$(tree_ticks "$PICLOUD_PID"); sleep 1; b=$(tree_ticks "$PICLOUD_PID")
        ((b - a < 5)) && return 0
    done
}

run() { # name -> "req/s µs-of-CPU-per-request"
    local out=$WORK/$1.txt t0 t1
    wait_quiet
    wrk -t2 -c64 -d"$WARMUP" "$BASE/fn/hello-log" >/dev/null
    t0=$(tree_ticks "$PICLOUD_PID")
    wrk -t2 -c64 -d"$DURATION" --latency "$BASE/fn/hello-log" >"$out"
    t1=$(tree_ticks "$PICLOUD_PID")
    echo "$(awk '/Requests\/sec/ {print $2}' "$out") $(cpu_us_per_request $((t1 - t0)) "$out")"
}

declare -a A B CA CB
for ((r = 1; r <= ROUNDS; r++)); do
    read -r a ca < <(run "plain-$r")
    curl -sN -H "Authorization: Bearer $TOKEN" \
        "$BASE/api/v1/scripts/hello-log/logs?follow=true" >"$WORK/follow-$r.sse" &
    FOLLOWER=$!
    PIDS+=("$FOLLOWER")
    read -r b cb < <(run "follow-$r")
    kill "$FOLLOWER" 2>/dev/null || true
    wait "$FOLLOWER" 2>/dev/null || true
    lines=$(grep -c '^event: line' "$WORK/follow-$r.sse" || true)
    cut=$(grep -c '^event: overflow' "$WORK/follow-$r.sse" || true)
    printf 'round %d: no follower %s req/s %s µs CPU/req, one follower %s req/s %s µs CPU/req (it received %s lines, cut off: %s)\n' \
        "$r" "$a" "$ca" "$b" "$cb" "$lines" "$cut"
    A+=("$a") B+=("$b") CA+=("$ca") CB+=("$cb")
done
median() { printf '%s\n' "$@" | sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
ma=$(median "${A[@]}") mb=$(median "${B[@]}")
awk -v a="$ma" -v b="$mb" 'BEGIN { printf "medians: no follower %.0f req/s, one follower %.0f req/s: %+.1f%%\n", a, b, (b - a) * 100 / a }'
mca=$(median "${CA[@]}") mcb=$(median "${CB[@]}")
awk -v a="$mca" -v b="$mcb" 'BEGIN { printf "CPU per request (PiCloud, NATS, Postgres): no follower %.1f µs, one follower %.1f µs: %+.1f%%\n", a, b, (b - a) * 100 / a }'

# The follower's cost per line, measured alone: replay the last round.
first=$(awk '/^id: / {print $2; exit}' "$WORK/follow-$ROUNDS.sse")
want=$(grep -c '^event: line' "$WORK/follow-$ROUNDS.sse" || true)
wait_quiet
t0=$(tree_ticks "$PICLOUD_PID")
curl -sN -H "Authorization: Bearer $TOKEN" -H "Last-Event-ID: $first" \
    "$BASE/api/v1/scripts/hello-log/logs?follow=true" >"$WORK/replay.sse" &
REPLAY=$!
PIDS+=("$REPLAY")
for _ in $(seq 1 600); do
    # The first event after $first is the line after it: want - 1 lines.
    (($(grep -c '^event: line' "$WORK/replay.sse" || true) >= want - 1)) && break
    sleep 0.1
done
t1=$(tree_ticks "$PICLOUD_PID")
kill "$REPLAY" 2>/dev/null || true
got=$(grep -c '^event: line' "$WORK/replay.sse" || true)
awk -v t=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" -v n="$got" -v req="$mca" 'BEGIN {
    us = t / hz * 1e6 / n
    printf "a follower alone: %d lines replayed, %.2f µs CPU per line (PiCloud, NATS, Postgres) = %.2f%% of the %.1f µs a request costs\n", n, us, us * 100 / req, req }'
