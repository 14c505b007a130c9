#!/usr/bin/env bash
# The failure suite's long form (docs/RELIABILITY.md), by hand: a release
# build, 30 s of load before and after each fault (SUITE_PHASE_MS to
# change it). scripts/test.sh runs the CI size (3 s, debug build).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p picloud
export PICLOUD_BIN="${CARGO_TARGET_DIR:-target}/release/picloud"
export SUITE_PHASE_MS=${SUITE_PHASE_MS:-30000}
exec scripts/failure-suite.sh "$@"
