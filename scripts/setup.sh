#!/usr/bin/env bash
# Installs what PiCloud needs on Debian/Ubuntu and is missing: nats-server and
# PostgreSQL (server and client). Idempotent: installs nothing that is there.
# Rust (cargo) is expected to be installed already (https://rustup.rs).
set -euo pipefail

need=()
command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || need+=(nats-server)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || need+=(postgresql)
command -v psql >/dev/null 2>&1 || need+=(postgresql-client)
# For the README's worked example (it JSON-encodes a script file).
command -v python3 >/dev/null 2>&1 || need+=(python3)

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is not installed: install Rust first (https://rustup.rs)" >&2
  exit 1
fi

if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing: ${need[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
