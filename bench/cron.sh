#!/usr/bin/env bash
# bench/cron.sh: cron firing lateness, and the idle cost of a node with
# schedules that are not due yet.
#
#   bash bench/cron.sh
#
# Starts `picloud up` (private NATS and Postgres under a temporary
# PICLOUD_DATA_DIR in /tmp, on a free loopback port) and deploys a script that
# logs `event.scheduled_at`. Then:
#   1. lateness: an every-second schedule for LATE_SECONDS; for each firing,
#      script start (the invocation's started_at) minus its scheduled instant;
#      prints p50, p99 and max;
#   2. idle: 100 daily schedules whose next instants all lie 5 to 60 minutes
#      ahead; after a settle, over IDLE_SECONDS, the node's committed database
#      transactions per second (pg_stat_database.xact_commit of its database)
#      and the CPU of the picloud process and of its whole tree (private NATS
#      and Postgres included), from /proc/<pid>/stat.
# Stops everything it started on exit.
#
# Knobs (environment): LATE_SECONDS (60), IDLE_SECONDS (60), BIN (the picloud
# binary; default: release build under CARGO_TARGET_DIR or target/, built
# unless BUILD=0).

set -euo pipefail

LATE_SECONDS=${LATE_SECONDS:-60}
IDLE_SECONDS=${IDLE_SECONDS:-60}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
if [[ -z ${BIN:-} ]]; then
    BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/picloud
    [[ ${BUILD:-1} == 0 ]] || cargo build --release -p picloud >&2
fi

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

DATA=$(mktemp -d /tmp/picloud-cron-bench.XXXXXX)
chmod 755 "$DATA"
PID=""
cleanup() {
    local status=$? i
    trap - EXIT INT TERM
    if [[ -n $PID ]] && kill -0 "$PID" 2>/dev/null; then
        kill -TERM "$PID" 2>/dev/null || true
        for ((i = 0; i < 300; i++)); do
            kill -0 "$PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$PID" 2>/dev/null || true
    fi
    rm -rf "$DATA"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
BASE="http://127.0.0.1:$PORT"
env -u PICLOUD_DATABASE_URL -u PICLOUD_NATS_URL -u PICLOUD_ADMIN_TOKEN -u PICLOUD_CONFIG \
    PICLOUD_DATA_DIR="$DATA" PICLOUD_LISTEN="127.0.0.1:$PORT" RUST_LOG=warn \
    "$BIN" up >"$DATA/up.log" 2>&1 &
PID=$!
for ((i = 0; i < 1200; i++)); do
    [[ $(curl -s -o /dev/null -w '%{http_code}' "$BASE/readyz" || true) == 200 ]] && break
    kill -0 "$PID" 2>/dev/null || die "picloud up exited: $(tail -5 "$DATA/up.log")"
    sleep 0.1
done
[[ $(curl -s -o /dev/null -w '%{http_code}' "$BASE/readyz") == 200 ]] || die "picloud up never became ready"
TOKEN=$(cat "$DATA/admin-token")

api() { # METHOD PATH [JSON]
    curl -sf -X "$1" -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' \
        ${3:+--data "$3"} "$BASE/api/v1$2"
}
psql_q() { psql -h "$DATA/postgres/run" -U picloud -d postgres -Atc "$1"; }

api PUT /scripts/tick '{"source": "log(`${event.scheduled_at}`); ()"}' >/dev/null

# ---- 1. lateness ---------------------------------------------------------

log "every-second schedule for ${LATE_SECONDS}s"
ID=$(api POST /schedules '{"script": "tick", "cron": "* * * * * *"}' |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
sleep "$LATE_SECONDS"
api DELETE "/schedules/$ID" >/dev/null
sleep 3
api GET '/invocations?script=tick&limit=1000' | python3 -c '
import json, sys
from datetime import datetime
late = sorted(
    (datetime.fromisoformat(r["started_at"].replace("Z", "+00:00"))
     - datetime.fromisoformat(r["log"].strip().replace("Z", "+00:00"))).total_seconds() * 1000
    for r in json.load(sys.stdin) if r["trigger"] == "cron")
n = len(late)
print(f"lateness over {n} firings (scheduled instant -> script start): "
      f"p50 {late[n // 2]:.1f} ms, p99 {late[max(0, -(-n * 99 // 100) - 1)]:.1f} ms, max {late[-1]:.1f} ms")
'

# ---- 2. idle cost --------------------------------------------------------

log "100 schedules due in the next hour"
python3 - "$(date -u +%s)" <<'EOF' >"$DATA/crons"
import sys
now = int(sys.argv[1])
for i in range(100):
    t = now + 300 + i * 33          # 5 to 60 minutes ahead
    s, m, h = t % 60, t // 60 % 60, t // 3600 % 24
    print(f"{s} {m} {h} * * *")
EOF
while read -r cron; do
    api POST /schedules "{\"script\": \"tick\", \"cron\": \"$cron\"}" >/dev/null
done <"$DATA/crons"
sleep 10

ticks() { # PID: utime + stime
    awk '{ print $14 + $15 }' "/proc/$1/stat"
}
tree_ticks() { # PID and all its descendants (Postgres backends included)
    local total p
    total=$(ticks "$1" 2>/dev/null || echo 0)
    for p in $(pgrep -P "$1" || true); do
        total=$((total + $(tree_ticks "$p")))
    done
    echo "$total"
}
xacts() { psql_q "SELECT xact_commit FROM pg_stat_database WHERE datname = 'picloud'"; }
# Postgres' own autovacuum and autoanalyze runs (they commit transactions in
# the database too, and are not PiCloud's doing). Read outside the window.
autovacuums() {
    psql -h "$DATA/postgres/run" -U picloud -d picloud -Atc \
        "SELECT coalesce(sum(autovacuum_count + autoanalyze_count), 0) FROM pg_stat_user_tables"
}

HZ=$(getconf CLK_TCK)
a0=$(autovacuums)
sleep 2 # its statistics reach pg_stat_database before the window opens
x0=$(xacts) p0=$(ticks "$PID") t0=$(tree_ticks "$PID") s0=$(date +%s.%N)
sleep "$IDLE_SECONDS"
x1=$(xacts) p1=$(ticks "$PID") t1=$(tree_ticks "$PID") s1=$(date +%s.%N)
a1=$(autovacuums)
python3 - "$x0" "$x1" "$p0" "$p1" "$t0" "$t1" "$s0" "$s1" "$HZ" "$a0" "$a1" <<'EOF'
import sys
x0, x1, p0, p1, t0, t1 = map(int, sys.argv[1:7])
s0, s1, hz = float(sys.argv[7]), float(sys.argv[8]), int(sys.argv[9])
a0, a1 = int(sys.argv[10]), int(sys.argv[11])
secs = s1 - s0
print(f"idle with 100 schedules pending, over {secs:.0f} s: "
      f"{(x1 - x0) / secs:.3f} database transactions/s ({x1 - x0} in all; "
      f"Postgres ran {a1 - a0} autovacuum/autoanalyze passes meanwhile); "
      f"CPU picloud {100 * (p1 - p0) / hz / secs:.2f}% of one core, "
      f"with its private NATS and Postgres {100 * (t1 - t0) / hz / secs:.2f}%")
EOF
