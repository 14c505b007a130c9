#!/usr/bin/env bash
# bench/run.sh: PiCloud's sync path against its baselines, redeploy latency,
# emit latency and async job throughput.
#
#   bash bench/run.sh
#
# Builds release binaries, starts `picloud up` (private NATS and Postgres under
# a temporary PICLOUD_DATA_DIR in /tmp, on a free loopback port), deploys a
# hello-world script, starts the baselines (raw axum; the minimal axum → NATS
# → Rhai pipe in core and JetStream mode, on the machine's NATS at
# 127.0.0.1:4222 or a nats-server started here), runs wrk against each at
# concurrency 1 and 64, then measures redeploy latency. Prints a summary; stops
# everything it started on exit. Results and logs: $WORK (kept with KEEP=1).
#
# Knobs (environment): DURATION (10s), WARMUP (2s), ROUNDS (1), REDEPLOYS (50),
# QUIET_WAIT (120: before each run, wait up to this many seconds for other
# processes to use < 10% of the machine; 0 = don't wait),
# TARGETS (the wrk targets, default "axum pipe-core pipe-js picloud picloud-kv"),
# EXTRAS=0 (skip the redeploy and events measurements),
# BENCH_NATS_URL (baselines' NATS; default: 4222 if something listens there),
# PROFILE=1 (after the measurements, one extra c64 run each of pipe-core and
# PiCloud under `perf record -a`: CPU per request by thread name; data kept
# in $WORK), BUILD=0 (use the binaries already built), KEEP=1 (keep $WORK).
#
# Every address is loopback; every wait is bounded.

set -euo pipefail

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
ROUNDS=${ROUNDS:-1}
REDEPLOYS=${REDEPLOYS:-50}
PROFILE=${PROFILE:-0}
KEEP=${KEEP:-0}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# ---- processes we start, and how they stop -------------------------------

PIDS=()
WORK=""

stop_pid() { # pid name seconds
    local pid=$1 name=$2 secs=$3 i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < secs * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    log "$name ($pid) did not stop in ${secs}s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
    local status=$? i
    trap - EXIT INT TERM
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        # Entries are "pid:name:grace-seconds".
        IFS=: read -r pid name secs <<<"${PIDS[$i]}"
        stop_pid "$pid" "$name" "$secs"
    done
    if [[ -n $WORK && -d $WORK ]]; then
        if [[ $KEEP == 1 ]]; then
            log "results and logs kept in $WORK"
        else
            rm -rf "$WORK"
        fi
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- helpers -------------------------------------------------------------

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null && return 0
    local p i
    for ((i = 0; i < 200; i++)); do
        p=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return 0
        fi
    done
    return 1
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_body URL EXPECTED SECONDS: until GET URL answers EXPECTED.
wait_body() {
    local url=$1 expected=$2 secs=$3 i body
    for ((i = 0; i < secs * 10; i++)); do
        body=$(curl -s --max-time 2 "$url" 2>/dev/null || true)
        [[ $body == "$expected" ]] && return 0
        sleep 0.1
    done
    return 1
}

# CPU ticks used so far by PID and all its descendants (with CHILDREN=1,
# also what their already-reaped children used).
tree_ticks() {
    local root=$1 pids total=0 p rest fields='$12 + $13'
    [[ ${CHILDREN:-0} == 1 ]] && fields='$12 + $13 + $14 + $15'
    pids=$(ps -e -o pid=,ppid= | awk -v root="$root" '
        { parent[$1] = $2; all[NR] = $1 }
        END {
            keep[root] = 1; changed = 1
            while (changed) {
                changed = 0
                for (i in all) { p = all[i]; if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; changed = 1 } }
            }
            for (p in keep) print p
        }')
    for p in $pids; do
        rest=$(cat "/proc/$p/stat" 2>/dev/null) || continue
        rest=${rest##*) }
        # After "comm)": state is field 1, utime field 12, stime field 13.
        total=$((total + $(awk "{print $fields}" <<<"$rest")))
    done
    echo "$total"
}

# Until PiCloud (and its NATS and Postgres) use < 5% of a core over a
# second, so that background work from one run (e.g. storing invocation
# records) does not leak into the next; and, unless QUIET_WAIT=0, until
# other processes use < 10% of the machine. Bounded by QUIET_WAIT seconds.
wait_quiet() {
    local i a b busy0 busy1 ours0 ours1 foreign limit=${QUIET_WAIT:-120}
    for ((i = 0; i < (limit > 90 ? limit : 90); i++)); do
        a=$(tree_ticks "$PICLOUD_PID") busy0=$(busy_ticks) ours0=$(our_ticks)
        sleep 1
        b=$(tree_ticks "$PICLOUD_PID") busy1=$(busy_ticks) ours1=$(our_ticks)
        foreign=$(((busy1 - busy0) - (ours1 - ours0)))
        if ((b - a < 5)) && { ((limit == 0)) || ((i >= limit)) || ((foreign * 10 < $(getconf CLK_TCK) * $(nproc))); }; then
            ((i > 1)) && log "waited ${i}s for a quiet machine"
            return 0
        fi
    done
    log "still busy after ${i}s; measuring anyway"
}

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

# Busy CPU ticks of the whole machine (user nice system irq softirq steal).
busy_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }

# Ticks used by everything this benchmark runs: this script's process tree
# (PiCloud and its NATS and Postgres, the baselines, wrk) plus the machine's
# nats-server when the baselines use it.
our_ticks() {
    local t
    t=$(CHILDREN=1 tree_ticks $$)
    if [[ -n ${SHARED_NATS_PID:-} ]]; then
        t=$((t + $(CHILDREN=1 tree_ticks "$SHARED_NATS_PID")))
    fi
    echo "$t"
}

# ---- build ---------------------------------------------------------------

if ! command -v wrk >/dev/null; then
    if [[ $(id -u) == 0 ]]; then
        log "installing wrk"
        apt-get install -y wrk >/dev/null || die "cannot install wrk"
    else
        die "wrk is not installed (sudo apt-get install -y wrk)"
    fi
fi
command -v curl >/dev/null || die "curl is not installed"

if [[ ${BUILD:-1} == 1 ]]; then
    log "building (release)"
    cargo build --release -p picloud -p picloud-bench
fi
[[ -x $BIN/picloud && -x $BIN/baseline-pipe && -x $BIN/baseline-jobs ]] || die "no release binaries in $BIN"

WORK=$(mktemp -d /tmp/picloud-bench.XXXXXX)
# As root, `picloud up` runs Postgres as the postgres user, who must be
# able to walk into the data directory.
chmod 711 "$WORK"
RESULTS=$WORK/results.tsv
: >"$RESULTS"

# ---- PiCloud -------------------------------------------------------------

PICLOUD_PORT=$(free_port)
BASE=http://127.0.0.1:$PICLOUD_PORT
log "starting picloud up on $BASE (data in $WORK/data)"
env -u PICLOUD_NATS_URL -u PICLOUD_DATABASE_URL -u PICLOUD_ADMIN_TOKEN \
    -u PICLOUD_CONFIG -u PICLOUD_PREFIX -u PICLOUD_WORKERS -u RUST_LOG \
    PICLOUD_LISTEN="127.0.0.1:$PICLOUD_PORT" PICLOUD_DATA_DIR="$WORK/data" \
    "$BIN/picloud" up >"$WORK/picloud.log" 2>&1 &
PICLOUD_PID=$!
PIDS+=("$PICLOUD_PID:picloud:60")

for ((i = 0; i < 1200; i++)); do
    curl -sf --max-time 2 "$BASE/readyz" >/dev/null 2>&1 && break
    kill -0 "$PICLOUD_PID" 2>/dev/null || { tail -20 "$WORK/picloud.log" >&2; die "picloud up exited"; }
    sleep 0.1
done
curl -sf --max-time 2 "$BASE/readyz" >/dev/null || { tail -20 "$WORK/picloud.log" >&2; die "picloud not ready in 120s"; }
TOKEN=$(cat "$WORK/data/admin-token")

log "deploying hello"
curl -sf --max-time 30 -X PUT "$BASE/api/v1/scripts/hello" \
    -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' \
    -d '{"source": "\"Hello, world!\""}' >/dev/null || die "deploy failed"
wait_body "$BASE/fn/hello" "Hello, world!" 30 || die "/fn/hello does not answer"
# The same answer after one kv write: every call commits through a manager.
curl -sf --max-time 30 -X PUT "$BASE/api/v1/scripts/hello-kv" \
    -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' \
    -d '{"source": "kv::set(\"last\", now_ms()); \"Hello, world!\""}' >/dev/null || die "deploy failed"
wait_body "$BASE/fn/hello-kv" "Hello, world!" 30 || die "/fn/hello-kv does not answer"

# ---- NATS for the baselines ---------------------------------------------

if [[ -n ${BENCH_NATS_URL:-} ]]; then
    NATS_URL=$BENCH_NATS_URL
elif port_open 4222; then
    NATS_URL=nats://127.0.0.1:4222
    SHARED_NATS_PID=$(ss -ltnpH 'sport = :4222' 2>/dev/null | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2 || true)
else
    NATS_BIN=$(command -v nats-server || echo /usr/sbin/nats-server)
    [[ -x $NATS_BIN ]] || die "nats-server is not installed (apt-get install -y nats-server)"
    NATS_PORT=$(free_port)
    mkdir -p "$WORK/nats"
    "$NATS_BIN" -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$WORK/nats" >"$WORK/nats.log" 2>&1 &
    PIDS+=("$!:nats-server:20")
    for ((i = 0; i < 200; i++)); do port_open "$NATS_PORT" && break; sleep 0.1; done
    port_open "$NATS_PORT" || die "nats-server did not start"
    NATS_URL=nats://127.0.0.1:$NATS_PORT
fi
log "baselines use NATS at $NATS_URL"

# ---- baselines -----------------------------------------------------------

AXUM_PORT=$(free_port)
"$BIN/baseline-axum" --listen "127.0.0.1:$AXUM_PORT" >"$WORK/axum.log" 2>&1 &
PIDS+=("$!:baseline-axum:10")
CORE_PORT=$(free_port)
"$BIN/baseline-pipe" --mode core --nats "$NATS_URL" --listen "127.0.0.1:$CORE_PORT" \
    >"$WORK/pipe-core.log" 2>&1 &
PIDS+=("$!:baseline-pipe-core:10")
JS_PORT=$(free_port)
"$BIN/baseline-pipe" --mode jetstream --nats "$NATS_URL" --listen "127.0.0.1:$JS_PORT" \
    >"$WORK/pipe-js.log" 2>&1 &
PIDS+=("$!:baseline-pipe-jetstream:10")

NAMES=(${TARGETS:-axum pipe-core pipe-js picloud picloud-kv})
declare -A URL=(
    [axum]="http://127.0.0.1:$AXUM_PORT/"
    [pipe-core]="http://127.0.0.1:$CORE_PORT/"
    [pipe-js]="http://127.0.0.1:$JS_PORT/"
    [picloud]="$BASE/fn/hello"
    [picloud-kv]="$BASE/fn/hello-kv"
)
for name in "${NAMES[@]}"; do
    wait_body "${URL[$name]}" "Hello, world!" 30 || die "$name does not answer at ${URL[$name]}"
done

# ---- wrk -----------------------------------------------------------------

# "1.23ms" / "456.00us" / "1.02s" → milliseconds.
to_ms() {
    awk -v v="$1" 'BEGIN {
        if (v ~ /us$/) printf "%.3f", substr(v, 1, length(v) - 2) / 1000
        else if (v ~ /ms$/) printf "%.3f", substr(v, 1, length(v) - 2)
        else if (v ~ /m$/) printf "%.3f", substr(v, 1, length(v) - 1) * 60000
        else if (v ~ /s$/) printf "%.3f", substr(v, 1, length(v) - 1) * 1000
        else printf "%s", v
    }'
}

measure() { # round name conc threads
    local round=$1 name=$2 conc=$3 threads=$4 url out load rps p50 p99 errs
    local b0 b1 o0 o1 t0 t1 other
    url=${URL[$name]}
    out=$WORK/wrk-$name-c$conc-r$round.txt
    wait_quiet
    wrk -t"$threads" -c"$conc" -d"$WARMUP" "$url" >/dev/null
    load=$(loadavg)
    b0=$(busy_ticks) o0=$(our_ticks) t0=$(date +%s%N)
    wrk -t"$threads" -c"$conc" -d"$DURATION" --latency "$url" >"$out"
    b1=$(busy_ticks) o1=$(our_ticks) t1=$(date +%s%N)
    # CPU used by other processes during the run, in % of the machine.
    other=$(awk -v db=$((b1 - b0)) -v ours=$((o1 - o0)) -v dt=$((t1 - t0)) \
        -v hz="$(getconf CLK_TCK)" -v n="$(nproc)" \
        'BEGIN { v = (db - ours) / (dt / 1e9 * hz * n) * 100; printf "%.0f%%", (v < 0 ? 0 : v) }')
    rps=$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' "$out")
    p50=$(to_ms "$(awk '$1 == "50%" {print $2}' "$out")")
    p99=$(to_ms "$(awk '$1 == "99%" {print $2}' "$out")")
    errs=$(awk '/Non-2xx or 3xx responses:/ {n += $NF}
                /Socket errors:/ {gsub(/,/, ""); n += $4 + $6 + $8 + $10}
                END {print n + 0}' "$out")
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
        "$round" "$name" "$conc" "$rps" "$p50" "$p99" "$errs" "$load" "$other" >>"$RESULTS"
    log "$(printf 'r%s %-9s c%-2s %8s req/s  p50 %7s ms  p99 %7s ms  errors %s  load %s  other CPU %s' \
        "$round" "$name" "$conc" "$rps" "$p50" "$p99" "$errs" "$load" "$other")"
}

for ((round = 1; round <= ROUNDS; round++)); do
    for conc in 1 64; do
        threads=$((conc == 1 ? 1 : 2))
        for name in "${NAMES[@]}"; do
            measure "$round" "$name" "$conc" "$threads"
        done
    done
done

# Peak RSS (VmHWM) of PiCloud's own process so far, and the current RSS of
# its NATS and Postgres (children; Postgres's shared buffers are counted
# once per process, so its sum is an upper bound), in MiB.
rss_line() { # label
    local hwm kids nats=0 pg=0 p comm rss
    hwm=$(awk '/^VmHWM:/ {printf "%.0f", $2 / 1024}' "/proc/$PICLOUD_PID/status")
    kids=$(ps -e -o pid=,ppid= | awk -v root="$PICLOUD_PID" '
        { parent[$1] = $2; all[NR] = $1 }
        END { keep[root] = 1; changed = 1
              while (changed) { changed = 0
                  for (i in all) { p = all[i]; if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; changed = 1 } } }
              for (p in keep) if (p != root) print p }')
    for p in $kids; do
        comm=$(cat "/proc/$p/comm" 2>/dev/null) || continue
        rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null) || continue
        case $comm in
            nats-server) nats=$((nats + rss)) ;;
            postgres*) pg=$((pg + rss)) ;;
        esac
    done
    printf '%s: picloud peak RSS %s MiB (goal <= 200); NATS %s MiB, Postgres %s MiB (sum of processes)\n' \
        "$1" "$hwm" $((nats / 1024)) $((pg / 1024)) | tee -a "$WORK/rss.txt" >&2
}
rss_line "after the sync runs"

# ---- redeploy latency ----------------------------------------------------

if [[ ${EXTRAS:-1} == 1 ]]; then
wait_quiet
log "redeploy latency (n=$REDEPLOYS); load $(loadavg)"
"$BIN/redeploy-latency" --base "$BASE" --token "$TOKEN" --n "$REDEPLOYS" | tee "$WORK/redeploy.txt"

# ---- events and async jobs ----------------------------------------------

wait_quiet
log "emit latency and async jobs (events-bench); load $(loadavg)"
"$BIN/events-bench" --base "$BASE" --token "$TOKEN" --jobs "${JOBS:-1000}" --concurrency 64 | tee "$WORK/events.txt"
rss_line "after the events and async jobs"

# ---- the minimal JetStream async pipe (the floor for async jobs) ----------

wait_quiet
log "minimal JetStream async pipe (baseline-jobs); load $(loadavg)"
"$BIN/baseline-jobs" --nats "$NATS_URL" --jobs "${PIPE_JOBS:-20000}" --concurrency 64 | tee "$WORK/pipe-jobs.txt"
fi
REDEPLOY_LOAD=$(loadavg)

# ---- optional profile ----------------------------------------------------

# profile NAME: one more c64 run of NAME under `perf record -a` (10 s), then
# the machine's CPU split by thread name, in % and in µs per request.
profile() {
    local name=$1 data out perf_pid rps i
    data=$WORK/perf-$name.data
    out=$WORK/wrk-$name-profiled.txt
    wait_quiet
    perf record -a -F 499 -o "$data" -- sleep 10 >/dev/null 2>&1 &
    perf_pid=$!
    PIDS+=("$perf_pid:perf:10")
    wrk -t2 -c64 -d10s "${URL[$name]}" >"$out"
    for ((i = 0; i < 300; i++)); do
        kill -0 "$perf_pid" 2>/dev/null || break
        sleep 0.1
    done
    stop_pid "$perf_pid" perf 10
    rps=$(awk '/^Requests\/sec:/ {print $2}' "$out")
    {
        printf '%s at c64 under perf: %.0f req/s\n' "$name" "$rps"
        printf '  %-18s %8s %12s\n' "thread name" "machine" "µs/request"
        perf report -i "$data" --no-children --sort comm --stdio 2>/dev/null |
            awk -v rps="$rps" -v n="$(nproc)" '/^ +[0-9.]+%/ {
                pct = $1; sub(/%/, "", pct); $1 = ""; sub(/^ +/, "")
                if (pct >= 0.5) printf "  %-18s %7.1f%% %12.1f\n", $0, pct, pct / 100 * n * 1e6 / rps }'
    } >"$WORK/profile-$name.txt"
    cat "$WORK/profile-$name.txt"
}

if [[ $PROFILE == 1 ]]; then
    if command -v perf >/dev/null; then
        log "profiling pipe-core and PiCloud at c64 (perf record -a)"
        PROFILES=$(profile pipe-core; profile picloud)
        perf report -i "$WORK/perf-picloud.data" --no-children --comm tokio-rt-worker,picloud-worker- \
            --sort dso,symbol --stdio 2>/dev/null | grep -v '^#' | grep -v '^$' | cut -c1-160 |
            head -80 >"$WORK/perf-picloud-symbols.txt" || true
        log "hottest symbols in PiCloud's threads: $WORK/perf-picloud-symbols.txt"
        KEEP=1
    else
        log "perf not found; no profile"
    fi
fi

# ---- summary -------------------------------------------------------------

echo
echo "## Results ($(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'))"
echo "wrk $DURATION per run after a $WARMUP warm-up; c1 = -t1 -c1, c64 = -t2 -c64"
echo
echo "other CPU = CPU used during the run by processes this benchmark did not start, in % of the machine"
echo
echo "| round | target | conc | req/s | p50 ms | p99 ms | errors | load before (1/5/15 min) | other CPU |"
echo "| --- | --- | --- | ---: | ---: | ---: | ---: | --- | ---: |"
awk -F'\t' '{printf "| %s | %s | c%s | %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6, $7, $8, $9}' "$RESULTS"
echo
if ((ROUNDS > 1)); then
    echo
    echo "Median over the rounds whose other CPU was < 5% (over all rounds where none was):"
    echo
    echo "| target | conc | req/s | p50 ms | p99 ms | rounds used |"
    echo "| --- | --- | ---: | ---: | ---: | ---: |"
fi
# Median of each metric per target and concurrency over the undisturbed
# rounds (other CPU < 5%), or over all rounds if none was; then the ratios.
awk -F'\t' -v rounds="$ROUNDS" '
    function median(list,   a, n, i, j, t) {
        n = split(list, a, " ")
        for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j - 1] + 0 > a[j] + 0; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
        return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    function ratio(a, b) { return (b > 0) ? sprintf("%.2f", a / b) : "n/a" }
    { k = $2 SUBSEP $3; rps[k] = rps[k] " " $4; p50[k] = p50[k] " " $5; p99[k] = p99[k] " " $6; all[k]++
      other = $9; sub(/%/, "", other)
      if (other + 0 < 5) { crps[k] = crps[k] " " $4; cp50[k] = cp50[k] " " $5; cp99[k] = cp99[k] " " $6; clean[k]++ }
      if (!(k in seen)) { seen[k] = 1; order[++n] = k } }
    END {
        for (i = 1; i <= n; i++) {
            k = order[i]; split(k, kk, SUBSEP)
            if (clean[k] > 0) { R[k] = median(crps[k]); P[k] = median(cp50[k]); Q = median(cp99[k]); used = clean[k] "/" all[k] }
            else { R[k] = median(rps[k]); P[k] = median(p50[k]); Q = median(p99[k]); used = "0/" all[k] " (all used)" }
            if (rounds > 1) printf "| %s | c%s | %.0f | %.3f | %.3f | %s |\n", kk[1], kk[2], R[k], P[k], Q, used
        }
        pc64 = "picloud" SUBSEP 64; cc64 = "pipe-core" SUBSEP 64; jc64 = "pipe-js" SUBSEP 64; ac64 = "axum" SUBSEP 64
        pc1 = "picloud" SUBSEP 1; cc1 = "pipe-core" SUBSEP 1; jc1 = "pipe-js" SUBSEP 1
        print ""
        print "Ratios (goal: PiCloud req/s at c64 >= 0.90x pipe-core; PiCloud p50 at c1 <= 1.20x pipe-core):"
        printf "  PiCloud / pipe-core:    req/s c64 = %s, p50 c1 = %s\n", ratio(R[pc64], R[cc64]), ratio(P[pc1], P[cc1])
        printf "  pipe-js / pipe-core:    req/s c64 = %s, p50 c1 = %s\n", ratio(R[jc64], R[cc64]), ratio(P[jc1], P[cc1])
        printf "  PiCloud / axum:         req/s c64 = %s\n", ratio(R[pc64], R[ac64])
        kc64 = "picloud-kv" SUBSEP 64; kc1 = "picloud-kv" SUBSEP 1
        printf "  PiCloud+kv / PiCloud:   req/s c64 = %s, p50 c1 = %s\n", ratio(R[kc64], R[pc64]), ratio(P[kc1], P[pc1])
    }' "$RESULTS"
if [[ -f $WORK/redeploy.txt ]]; then
echo
echo "Redeploy (goal: p50 <= 50 ms, max < 100 ms), load $REDEPLOY_LOAD after:"
grep -v '^RESULT' "$WORK/redeploy.txt" | sed 's/^/  /'
echo
echo "Events and async jobs (events-bench):"
sed 's/^/  /' "$WORK/events.txt"
echo
echo "Durable paths beside their floors (issue #17 targets):"
pipe=$(awk '/^pipe-jobs:/ {print $(NF-4)}' "$WORK/pipe-jobs.txt")
awk -v pipe="$pipe" '
    function r(v) { return (pipe > 0) ? sprintf("%.2f", v / pipe) : "n/a" }
    /^async jobs: [0-9]+ accepted/ { printf "  async jobs %s/s end to end; pipe-jobs %s/s (%sx; goal >= 0.5x and >= 5000/s)\n", $(NF-4), pipe, r($(NF-4)) }
    /^event fan-out:/ { for (i = 1; i <= NF; i++) { if ($i == "subscriber" && $(i+1) == "runs/s;") runs = $(i-1); if ($i == "p50") p50 = $(i+1); if ($i == "p99") p99 = $(i+1) }
        printf "  fan-out %s subscriber runs/s (goal >= 5000/s; floor pipe-jobs %s/s); emit -> start under load p50 %s ms (goal <= 2), p99 %s ms (goal <= 10)\n", runs, pipe, p50, p99 }
    /^kv commits, distinct/ { for (i = 1; i <= NF; i++) if ($i == "committed") v = $(i-1); printf "  kv distinct keys %s commits/s (goal >= 5000/s; floor pipe-jobs %s/s)\n", v, pipe }
    /^kv commits, one key/ { for (i = 1; i <= NF; i++) if ($i == "committed") v = $(i-1); sub(/.*; /, ""); printf "  kv one key %s commits/s (goal >= 2000/s, exact): %s\n", v, $0 }
' "$WORK/events.txt"
sed 's/^/  /' "$WORK/rss.txt"
fi
if [[ -n ${PROFILES:-} ]]; then
    echo
    echo "CPU per request at c64 (perf record -a; thread names: tokio-rt-worker = the"
    echo "server's async threads, picloud-worker-/bench-worker- = Rhai threads):"
    echo "$PROFILES" | sed 's/^/  /'
fi
