#!/usr/bin/env bash
# bench/records-floor.sh: what one invocation record costs Postgres, by the
# way it is written.
#
#   bash bench/records-floor.sh
#
# Creates a scratch database (dropped on exit) on PICLOUD_BENCH_DATABASE_URL's
# server (default: the machine's Postgres at 127.0.0.1:5432, user postgres),
# applies migrations/, and stores N (default 100,000) hello-world-like
# records with time-ordered ids, as the manager does, in several ways:
#
#   upsert      INSERT … SELECT … ON CONFLICT (id) DO UPDATE … WHERE … (the
#               store's general path)
#   copy        COPY … FROM STDIN into the real table (the store's path for
#               first reports)
#   copy-pk     COPY into the table without its secondary indexes (time,
#               script, parent): what no index but the primary key costs
#
# Each is run ROUNDS (3) times on an emptied table and the best time is
# reported, in µs per record (wall time of the statement; Postgres is
# single-threaded per statement, so this is its CPU plus its own I/O waits).

set -euo pipefail
N=${N:-100000}
ROUNDS=${ROUNDS:-3}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
URL=${PICLOUD_BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
DB=picloud_records_floor_$$
WORK=$(mktemp -d /tmp/picloud-floor.XXXXXX)
chmod 755 "$WORK"
cleanup() {
    psql "$URL" -qc "DROP DATABASE IF EXISTS $DB" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

psql "$URL" -qc "CREATE DATABASE $DB" >/dev/null
DBURL=${URL%/*}/$DB
for f in "$ROOT"/migrations/*.sql; do psql "$DBURL" -q -v ON_ERROR_STOP=1 -f "$f" >/dev/null; done

# The records, as COPY text: time-ordered (v7-like) ids, one script, status ok.
psql "$DBURL" -qAtc "
  COPY (SELECT (lpad(to_hex(1790000000000 + g), 12, '0') || '7' || substr(md5(g::text), 1, 3)
                || '8' || substr(md5(g::text), 4, 15))::uuid,
               'hello', 1, 'http', 'ok', 200,
               to_timestamp(1790000000 + g / 1000.0), 40, '', NULL,
               'host-1234-0f3c9a', gen_random_uuid(), 1, NULL, NULL, false
        FROM generate_series(1, $N) g) TO STDOUT" >"$WORK/records.copy"

COLS="id, script, version, trigger, status, http_status, started_at, duration_us, log, error, executor, trace_id, attempt, parent_id, response, public"
# ms of one statement after an emptied table.
timed() { # sql-file
    psql "$DBURL" -qAt -v ON_ERROR_STOP=1 -f "$1" 2>&1 | awk '/^Time:/ {t = $2} END {print t}'
}
best() { # name sql-file
    local best="" t i
    for ((i = 0; i < ROUNDS; i++)); do
        t=$(timed "$2")
        if [[ -z $best ]] || awk -v a="$t" -v b="$best" 'BEGIN {exit !(a < b)}'; then best=$t; fi
    done
    awk -v n="$N" -v ms="$best" -v name="$1" 'BEGIN {printf "  %-8s %7.2f µs per record (%.0f ms for %d)\n", name, ms * 1000 / n, ms, n}'
}

cat >"$WORK/upsert.sql" <<SQL
TRUNCATE invocations CASCADE;
CREATE TEMP TABLE src (LIKE invocations);
\\copy src FROM '$WORK/records.copy'
CHECKPOINT;
\\timing on
INSERT INTO invocations ($COLS) SELECT $COLS FROM src
ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status, attempt = EXCLUDED.attempt
WHERE invocations.status <> 'ok' AND invocations.attempt <= EXCLUDED.attempt;
SQL
cat >"$WORK/copy.sql" <<SQL
TRUNCATE invocations CASCADE;
CHECKPOINT;
\\timing on
\\copy invocations ($COLS) FROM '$WORK/records.copy'
SQL

echo "Postgres cost of one invocation record ($(psql "$DBURL" -qAtc 'SHOW server_version'), best of $ROUNDS):"
best upsert "$WORK/upsert.sql"
best copy "$WORK/copy.sql"
psql "$DBURL" -qc "DROP INDEX invocations_by_time, invocations_by_script, invocations_by_parent" >/dev/null
best copy-pk "$WORK/copy.sql"
