#!/usr/bin/env bash
# Builds the dashboard (dashboard/build, served at /dashboard by the manager
# role and `picloud up`) with Node 20: `npm ci` (the npm cache is kept
# outside the clone, in PICLOUD_NPM_CACHE) then `npm run build`.
#   scripts/dashboard.sh          build it
#   scripts/dashboard.sh check    also: API types current, svelte-check,
#                                 vitest, bundle budget
# Without Node it says so and exits 0 when only building (PiCloud then serves
# a page saying how to build the dashboard), 1 when checking.
set -euo pipefail
cd "$(dirname "$0")/../dashboard"
mode="${1:-build}"
if ! command -v npm >/dev/null 2>&1; then
  echo "dashboard: npm not found (install Node 20); /dashboard will say how to build it" >&2
  [ "$mode" = build ] && exit 0 || exit 1
fi
cache="${PICLOUD_NPM_CACHE:-/var/tmp/picloud-npm-cache}"
# Reinstall only when the lock file changed since the last install.
if [ ! -f node_modules/.package-lock.json ] || ! cmp -s package-lock.json node_modules/.picloud-lock; then
  npm ci --cache "$cache" --prefer-offline --no-audit --no-fund --loglevel=error
  cp package-lock.json node_modules/.picloud-lock
fi
npm run --silent build >/dev/null
echo "dashboard: built into dashboard/build"
if [ "$mode" = check ]; then
  npm run --silent api:check
  npm run --silent check
  npm run --silent test
  npm run --silent size
fi
