#!/usr/bin/env bash
# bench/no-records.sh: what do invocation records cost PiCloud's sync path?
#
#   bash bench/no-records.sh
#
# An A/B experiment without touching PiCloud's code. Both variants run
# `picloud up` (embedded Postgres) against one nats-server started here, each
# with its own PICLOUD_PREFIX and data directory, both up the whole time, and
# are measured alternately with wrk at c1 and c64 against /fn/hello:
#
# - records:    as shipped: executors batch records into {P}_RECORDS, the
#               manager consumes them into Postgres.
# - no-records: {P}_RECORDS is created beforehand with max_bytes = 1, so
#               every batch is refused; the executor's publisher backs off and
#               its bounded buffer drops records. Nothing reaches the manager
#               or Postgres; the hot path still builds each record.
#
# With B_BIN=/path/to/another/picloud it is instead an A/B comparison of two
# builds, both with records: "a" runs $BIN/picloud (or A_BIN), "b" runs B_BIN.
#
# Assumes `cargo build --release -p picloud -p picloud-bench` (bench/run.sh
# does it). Knobs: DURATION (10s), WARMUP (2s), ROUNDS (2), CONCS ("1 64"), KEEP=1. Before
# each run it waits (up to 120 s) for other processes to use < 10% of the
# machine, and reports what they used during the run ("other CPU"). Loopback only; every
# wait bounded; everything started here is stopped on exit.

set -euo pipefail

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
KEEP=${KEEP:-0}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
[[ -x $BIN/picloud ]] || { echo "build first: cargo build --release -p picloud" >&2; exit 1; }
command -v wrk >/dev/null || { echo "wrk is not installed" >&2; exit 1; }

log() { printf '==> %s\n' "$*" >&2; }

PIDS=()
WORK=$(mktemp -d /tmp/picloud-norec.XXXXXX)
chmod 711 "$WORK"

stop_pid() {
    local pid=$1 secs=$2 i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < secs * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}
cleanup() {
    local status=$? i
    trap - EXIT
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do stop_pid "${PIDS[$i]}" 60; done
    if [[ $KEEP == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Creates a stream through the JetStream API (plain NATS protocol, so no
# extra client is needed). Prints the server's answer.
js_create_stream() { # port name subject
    python3 - "$1" "$2" "$3" <<'EOF'
import json, socket, sys
port, name, subject = int(sys.argv[1]), sys.argv[2], sys.argv[3]
cfg = {
    "name": name, "subjects": [subject], "retention": "workqueue",
    "max_consumers": -1, "max_msgs": -1, "max_bytes": 1, "max_age": 0,
    "max_msg_size": -1, "storage": "file", "discard": "new", "num_replicas": 1,
}
body = json.dumps(cfg).encode()
s = socket.create_connection(("127.0.0.1", port), timeout=5)
f = s.makefile("rb")
f.readline()  # INFO
s.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\nSUB _INBOX.norec 1\r\n'
          + f"PUB $JS.API.STREAM.CREATE.{name} _INBOX.norec {len(body)}\r\n".encode()
          + body + b"\r\n")
for _ in range(20):
    line = f.readline().decode().strip()
    if line.startswith("PING"):
        s.sendall(b"PONG\r\n")
    elif line.startswith("MSG"):
        n = int(line.split()[-1])
        print(f.read(n + 2).decode().strip())
        break
    elif line.startswith("-ERR"):
        sys.exit(line)
EOF
}

NATS_PORT=$(free_port)
mkdir -p "$WORK/nats"
nats-server -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$WORK/nats" >"$WORK/nats.log" 2>&1 &
PIDS+=("$!")
NATS_PID=$!
for ((i = 0; i < 200; i++)); do port_open "$NATS_PORT" && break; sleep 0.1; done
NATS_URL=nats://127.0.0.1:$NATS_PORT

busy_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }
# tree_ticks ROOT: CPU ticks of one process tree.
. "$ROOT/bench/lib.sh"
# CPU ticks of this script's process tree.
our_ticks() { tree_ticks $$; }
# Up to 120 s, until other processes use < 10% of the machine for a second.
wait_quiet() {
    local i b0 b1 o0 o1
    for ((i = 0; i < 120; i++)); do
        b0=$(busy_ticks) o0=$(our_ticks)
        sleep 1
        b1=$(busy_ticks) o1=$(our_ticks)
        (((b1 - b0 - o1 + o0) * 10 < $(getconf CLK_TCK) * $(nproc))) && return 0
    done
}

declare -A BASE VPID
start_variant() { # name prefix binary
    local name=$1 prefix=$2 bin=$3 port base token i
    port=$(free_port)
    base=http://127.0.0.1:$port
    BASE[$name]=$base
    if [[ $name == no-records ]]; then
        log "pre-creating ${prefix^^}_RECORDS with max_bytes 1"
        js_create_stream "$NATS_PORT" "${prefix^^}_RECORDS" "$prefix.records" | cut -c1-100 >&2
    fi
    env -u PICLOUD_DATABASE_URL -u PICLOUD_ADMIN_TOKEN -u PICLOUD_CONFIG -u RUST_LOG \
        PICLOUD_NATS_URL="$NATS_URL" PICLOUD_PREFIX="$prefix" \
        PICLOUD_LISTEN="127.0.0.1:$port" PICLOUD_DATA_DIR="$WORK/data-$name" \
        "$bin" up >"$WORK/picloud-$name.log" 2>&1 &
    PIDS+=("$!")
    VPID[$name]=$!
    for ((i = 0; i < 1200; i++)); do
        curl -sf --max-time 2 "$base/readyz" >/dev/null 2>&1 && break
        sleep 0.1
    done
    token=$(cat "$WORK/data-$name/admin-token")
    curl -sf --max-time 30 -X PUT "$base/api/v1/scripts/hello" \
        -H "Authorization: Bearer $token" -H 'content-type: application/json' \
        -d '{"source": "\"Hello, world!\""}' >/dev/null
    for ((i = 0; i < 300; i++)); do
        [[ $(curl -s --max-time 2 "$base/fn/hello") == "Hello, world!" ]] && return 0
        sleep 0.1
    done
    echo "$name: /fn/hello does not answer" >&2
    exit 1
}

RESULTS=()
measure() { # round name conc
    local round=$1 name=$2 conc=$3 threads out load b0 b1 o0 o1 t0 t1 other v0 v1 cpu
    threads=$((conc == 1 ? 1 : 2))
    wait_quiet
    wrk -t"$threads" -c"$conc" -d"$WARMUP" "${BASE[$name]}/fn/hello" >/dev/null
    out=$WORK/wrk-$name-c$conc-r$round.txt
    load=$(cut -d' ' -f1-3 /proc/loadavg)
    v0=$(($(tree_ticks "${VPID[$name]}") + $(tree_ticks "$NATS_PID")))
    b0=$(busy_ticks) o0=$(our_ticks) t0=$(date +%s%N)
    wrk -t"$threads" -c"$conc" -d"$DURATION" --latency "${BASE[$name]}/fn/hello" >"$out"
    b1=$(busy_ticks) o1=$(our_ticks) t1=$(date +%s%N)
    v1=$(($(tree_ticks "${VPID[$name]}") + $(tree_ticks "$NATS_PID")))
    # Server-side CPU (PiCloud, its Postgres, the NATS server) per request.
    cpu=$(cpu_us_per_request $((v1 - v0)) "$out")
    other=$(awk -v x=$((b1 - b0 - o1 + o0)) -v dt=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" -v n="$(nproc)" \
        'BEGIN { v = x / (dt / 1e9 * hz * n) * 100; printf "%.0f%%", (v < 0 ? 0 : v) }')
    RESULTS+=("$(printf '| %s | %s | c%s | %s | %s | %s | %s | %s | %s |' "$round" "$name" "$conc" \
        "$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' "$out")" \
        "$(awk '$1 == "50%" {print $2}' "$out")" \
        "$(awk '$1 == "99%" {print $2}' "$out")" "$cpu" "$load" "$other")")
    log "${RESULTS[-1]}"
}

if [[ -n ${B_BIN:-} ]]; then
    VARIANTS=(a b)
    start_variant a vara "${A_BIN:-$BIN/picloud}"
    start_variant b varb "$B_BIN"
else
    VARIANTS=(records no-records)
    start_variant records rec "$BIN/picloud"
    start_variant no-records norec "$BIN/picloud"
fi
# Both installations stay up (idle) the whole time; their runs alternate.
for ((round = 1; round <= ${ROUNDS:-2}; round++)); do
    for conc in ${CONCS:-1 64}; do
        for v in "${VARIANTS[@]}"; do measure "$round" "$v" "$conc"; done
    done
done
[[ -n ${B_BIN:-} ]] || log "record batches refused (no-records executor log): $(grep -c 'cannot publish invocation records' "$WORK/picloud-no-records.log" || true)"

echo
echo "| round | variant | conc | req/s | p50 | p99 | server CPU µs/req | load before | other CPU |"
echo "| --- | --- | --- | ---: | ---: | ---: | ---: | --- | ---: |"
printf '%s\n' "${RESULTS[@]}"
