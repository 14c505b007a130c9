#!/usr/bin/env bash
# bench/stats.sh: how long GET /api/v1/stats takes over a million records.
#
#   bash bench/stats.sh            # RECORDS=1000000 by default
#
# Runs the test `stats_over_many_records_come_from_the_rollup`
# (services/picloud/tests/stats.rs) in release: RECORDS synthetic
# invocation records over the last 24 hours across 100 scripts (2% errors,
# durations 0.1–100 ms) go through the managers' real roll-up into a fresh
# database, then five stats queries are each answered ten times over HTTP
# by a real manager; it prints the median and worst time of each. Needs the
# test servers (Postgres on 127.0.0.1:5432, NATS on 4222, or
# PICLOUD_TEST_DATABASE_URL / PICLOUD_TEST_NATS_URL).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PICLOUD_STATS_BENCH_RECORDS=${RECORDS:-1000000}
cargo test --release -p picloud --test stats -- --nocapture --exact \
  stats_over_many_records_come_from_the_rollup 2>&1 |
  grep -E 'aggregated|GET /api|median|test result'
