#!/usr/bin/env bash
# Installs what is missing, builds PiCloud and runs `picloud up`: a private
# NATS and Postgres under the data directory, everything served on
# PICLOUD_LISTEN (default 127.0.0.1:8080), the dashboard at /dashboard.
# Ctrl-C stops it all.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/dashboard.sh
cargo build --release -p picloud
exec "${CARGO_TARGET_DIR:-target}/release/picloud" up "$@"
