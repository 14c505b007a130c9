#!/usr/bin/env bash
# Scale-out, measured (docs/PERFORMANCE.md, "Scale-out"): the same CPU-bound
# script served by 1, then 2 executors (one worker each, each pinned to its
# own core with taskset; gateways, managers, NATS and Caddy unpinned), on the
# cluster of scripts/cluster.sh, through Caddy.
#
#   bench/scale-out.sh            # release build; SECONDS_PER_RUN=10, CALLERS=8
#
# Prints the throughput with 1 and 2 executors, their ratio, and how long
# the second executor, started while the load runs, took from ready to its
# first invocation (no restart of anything else).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
if [ -z "${PICLOUD_BIN:-}" ]; then
  cargo build --release -q -p picloud
  PICLOUD_BIN="${CARGO_TARGET_DIR:-target}/release/picloud"
fi
[ "$(nproc)" -ge 2 ] || { echo "scale-out needs at least 2 cores" >&2; exit 1; }
export PICLOUD_BIN PICLOUD_CLUSTER_PIN=1 PICLOUD_CLUSTER_EXECUTORS=1 PICLOUD_WORKERS=1
# Below the usual ephemeral range (32768-60999), so that no outgoing
# connection holds a port the cluster binds later (executor 2's).
export PICLOUD_CLUSTER_PORT=${PICLOUD_CLUSTER_PORT:-21000}
export PICLOUD_CLUSTER_DIR=$(mktemp -d /tmp/picloud-scale-XXXXXX)
chmod 755 "$PICLOUD_CLUSTER_DIR"
trap 'scripts/cluster.sh down >/dev/null 2>&1 || true; rm -rf "$PICLOUD_CLUSTER_DIR"' EXIT
scripts/cluster.sh up >&2
eval "$(scripts/cluster.sh env | sed 's/^/export /')"
export SECONDS_PER_RUN=${SECONDS_PER_RUN:-10} CALLERS=${CALLERS:-8} CLUSTER="$repo/scripts/cluster.sh"
export EXECUTOR2_METRICS="http://127.0.0.1:$((PICLOUD_CLUSTER_PORT + 302))/metrics"
node --input-type=module <<'JS'
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
const { PICLOUD_URL: url, PICLOUD_TOKEN: token, CLUSTER: cluster, EXECUTOR2_METRICS: m2 } = process.env;
const secs = Number(process.env.SECONDS_PER_RUN), callers = Number(process.env.CALLERS);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const source = 'let x = 0; for i in 0..200000 { x += i; } x';
let r = await fetch(`${url}/api/v1/scripts/cpu`, { method: 'PUT', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: JSON.stringify({ source }) });
if (!r.ok) throw new Error(`deploy: ${r.status} ${await r.text()}`);
while ((await fetch(`${url}/fn/cpu`)).status !== 200) await sleep(100);
let ok = 0, other = 0, stop = false;
const loop = async () => { while (!stop) { const r = await fetch(`${url}/fn/cpu`); await r.arrayBuffer(); r.status === 200 ? ok++ : other++; } };
const load = Array.from({ length: callers }, loop);
async function rate(label) {
  await sleep(1000); // warm
  const [o0, t0] = [ok, performance.now()];
  await sleep(secs * 1000);
  const v = (ok - o0) / ((performance.now() - t0) / 1000);
  console.log(`${label}: ${v.toFixed(1)} calls/s`);
  return v;
}
const one = await rate('1 executor');
await promisify(execFile)(cluster, ['start', 'executor', '2']);
const ready = performance.now();
const served = async () => {
  const text = await (await fetch(m2)).text();
  return text.split('\n').some((l) => l.startsWith('picloud_invocations_total{script="cpu"') && Number(l.split(' ').pop()) > 0);
};
while (!(await served().catch(() => false))) await sleep(20);
console.log(`executor 2: first invocation ${((performance.now() - ready) / 1000).toFixed(2)} s after it was ready`);
const two = await rate('2 executors');
stop = true;
await Promise.all(load);
console.log(`ratio 2/1: ${(two / one).toFixed(2)} (non-200 answers: ${other})`);
JS
