// The failure suite (issue #16): a steady mixed load through Caddy on the
// cluster of scripts/cluster.sh, one fault at a time, and after each the
// checks that nothing was lost or done twice. Run by
// scripts/failure-suite.sh (which starts and stops the cluster); prints a
// Markdown results table (docs/RELIABILITY.md).
//
// Load, per phase, all through Caddy:
//   sync    GET /fn/work (a few ms of CPU): only 200, 503 or 504, each
//           within the deadline (wall time 5 s + 1 s grace, + 2 s margin)
//   async   POST /fn/work, Prefer: respond-async, Idempotency-Key (sent
//           twice: the same invocation both times); answers 202, 503 or
//           504 within 12 s (the retry also 409); every 202 must reach
//           `ok` on /status/{id}
//   events  POST /fn/emit1?id= emits chain.a → hop1 emits chain.b → count
//           adds the id to its kv state: every acknowledged (200) id must
//           be counted, and none twice (n == number of distinct ids)
//   cron    tick runs every second and counts its instants in kv: no
//           instant twice, none missing between the first and the last
//
// Environment: PICLOUD_URL (Caddy's admin origin), PICLOUD_TOKEN,
// CLUSTER (the cluster.sh path), SUITE_FAULTS (comma-separated names, default
// all), SUITE_PHASE_MS (load before and after each fault, default 3000).
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { randomUUID } from 'node:crypto';
import { writeFileSync } from 'node:fs';

const url = process.env.PICLOUD_URL;
const token = process.env.PICLOUD_TOKEN;
const cluster = process.env.CLUSTER;
const phaseMs = Number(process.env.SUITE_PHASE_MS || 3000);
const HANG_MS = 5000 + 1000 + 2000;
// An async submission waits at most 10 s for a manager to accept it
// (gateway), + 2 s margin.
const SUBMIT_HANG_MS = 10000 + 2000;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const now = () => performance.now();

let phaseStart = 0;
const at = () => `${((now() - phaseStart) / 1000).toFixed(1)}s`;

// Asynchronous, so the load goes on while cluster.sh works.
async function sh(...args) {
  if (args[0] !== 'status') console.error(`[suite] ${at()} cluster.sh ${args.join(' ')}`);
  const { stdout } = await promisify(execFile)(cluster, args, { encoding: 'utf8', maxBuffer: 1 << 20 });
  return stdout;
}

async function api(method, path, body) {
  const r = await fetch(url + path, {
    method,
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(15000),
  });
  const text = await r.text();
  if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

const SCRIPTS = {
  work: 'let x = 0; for i in 0..2000 { x += i; } `ok ${x}`',
  emit1: 'let id = request.query.id; emit("chain.a", #{ id: id, phase: request.query.phase }); id',
  hop1: 'if event.kind == "event" { emit("chain.b", event.payload); }',
  count: `if event.kind == "event" {
  let p = event.payload;
  let key = "s:" + p.phase;
  let s = kv::get(key) ?? #{ n: 0, seen: #{} };
  s.n += 1;
  s.seen[p.id] = (s.seen[p.id] ?? 0) + 1;
  kv::set(key, s);
} else {
  kv::get("s:" + request.query.phase) ?? #{ n: 0, seen: #{} }
}`,
  tick: `if event.kind == "cron" {
  let t = kv::get("ticks") ?? #{};
  t[event.scheduled_at] = (t[event.scheduled_at] ?? 0) + 1;
  kv::set("ticks", t);
} else {
  kv::get("ticks") ?? #{}
}`,
};

async function setup() {
  for (const [name, source] of Object.entries(SCRIPTS)) await api('PUT', `/api/v1/scripts/${name}`, { source });
  await api('POST', '/api/v1/subscriptions', { script: 'hop1', topic: 'chain.a' });
  await api('POST', '/api/v1/subscriptions', { script: 'count', topic: 'chain.b' });
  await api('POST', '/api/v1/schedules', { script: 'tick', cron: '* * * * * *' });
  // Routes reach every gateway through the bus: wait until work answers.
  for (let i = 0; ; i++) {
    const r = await fetch(`${url}/fn/work`).catch(() => null);
    if (r?.status === 200) break;
    if (i > 200) throw new Error('the deployed scripts never answered');
    await sleep(100);
  }
}

// One phase's load: workers loop until `stop`.
function startLoad(phase) {
  const st = { stop: false, sync: 0, syncBad: [], syncStatus: {}, hangs: 0, errTimes: [],
    acked: new Set(), emitted: 0, emitStatus: {}, accepted: new Map(), asyncStatus: {}, keyMismatch: 0 };
  const bad = () => st.errTimes.push(now());
  async function syncLoop() {
    while (!st.stop) {
      const t = now();
      const sent = at();
      let status;
      try {
        const r = await fetch(`${url}/fn/work`, { signal: AbortSignal.timeout(HANG_MS) });
        await r.arrayBuffer();
        status = r.status;
      } catch (e) {
        status = e.name === 'TimeoutError' ? 'hang' : 'conn';
      }
      st.sync++;
      st.syncStatus[status] = (st.syncStatus[status] || 0) + 1;
      if (status === 'hang') st.hangs++;
      if (![200, 503, 504].includes(status)) st.syncBad.push(`${status} sent at ${sent}`);
      if (status !== 200) bad();
      if (status === 200 && now() - t > HANG_MS) st.hangs++;
    }
  }
  async function emitLoop() {
    let i = 0;
    while (!st.stop) {
      const id = `${phase}-${i++}`;
      const sent = at();
      let status;
      try {
        const r = await fetch(`${url}/fn/emit1?phase=${phase}&id=${id}`, { method: 'POST', signal: AbortSignal.timeout(HANG_MS) });
        await r.arrayBuffer();
        status = r.status;
      } catch (e) {
        status = e.name === 'TimeoutError' ? 'hang' : 'conn';
      }
      st.emitted++;
      st.emitStatus[status] = (st.emitStatus[status] || 0) + 1;
      if (status === 200) st.acked.add(id);
      else bad();
      if (![200, 503, 504].includes(status)) st.syncBad.push(`emit ${status} sent at ${sent}`);
    }
  }
  async function asyncLoop() {
    while (!st.stop) {
      const key = randomUUID();
      const submit = async () => {
        try {
          const r = await fetch(`${url}/fn/work`, {
            method: 'POST',
            headers: { prefer: 'respond-async', 'idempotency-key': key },
            signal: AbortSignal.timeout(SUBMIT_HANG_MS),
          });
          const body = await r.text();
          return { status: r.status, id: r.status === 202 ? JSON.parse(body).invocation_id : null };
        } catch (e) {
          return { status: e.name === 'TimeoutError' ? 'hang' : 'conn' };
        }
      };
      const sent = at();
      const first = await submit();
      const again = await submit();
      for (const s of [first, again]) st.asyncStatus[s.status] = (st.asyncStatus[s.status] || 0) + 1;
      if (first.status !== 202) bad();
      // The retry may also hear 409: the first is still being accepted.
      if (![202, 503, 504].includes(first.status)) st.syncBad.push(`async ${first.status} sent at ${sent}`);
      if (![202, 409, 503, 504].includes(again.status)) st.syncBad.push(`async retry ${again.status} sent at ${sent}`);
      if (first.id) st.accepted.set(first.id, null);
      if (again.id) st.accepted.set(again.id, null);
      if (first.id && again.id && first.id !== again.id) st.keyMismatch++;
    }
  }
  st.done = Promise.all([syncLoop(), syncLoop(), emitLoop(), asyncLoop(), asyncLoop()]);
  return st;
}

async function untilTrue(what, ms, f) {
  const end = now() + ms;
  for (;;) {
    const v = await f().catch(() => false);
    if (v) return v;
    if (now() > end) return false;
    await sleep(200);
  }
}

async function allReady() {
  return (await sh('status')).split('\n').filter(Boolean).every((l) => / ready /.test(l));
}

const FAULTS = {
  'kill -9 executor': async () => {
    await sh('kill', 'executor', '1');
    await sleep(1000);
    await sh('start', 'executor', '1');
  },
  'kill -9 gateway': async () => {
    await sh('kill', 'gateway', '1');
    await sleep(1000);
    await sh('start', 'gateway', '1');
  },
  'kill -9 one NATS node': async () => {
    await sh('kill', 'nats', '2');
    await sleep(2000);
    await sh('start', 'nats', '2');
  },
  'restart every NATS node': async () => {
    for (const n of ['1', '2', '3']) await sh('restart', 'nats', n);
  },
  'restart Postgres': async () => {
    await sh('restart', 'postgres', '1');
  },
  'kill -9 manager': async () => {
    await sh('kill', 'manager', '1');
    await sleep(1000);
    await sh('start', 'manager', '1');
  },
  'rolling SIGTERM restart': async () => {
    for (const role of ['gateway', 'executor', 'manager']) for (const n of ['1', '2']) await sh('restart', role, n);
  },
};

async function finalStates(st) {
  const pending = new Set(st.accepted.keys());
  const end = now() + 90000;
  while (pending.size && now() < end) {
    const ids = [...pending];
    for (let i = 0; i < ids.length; i += 16) {
      await Promise.all(ids.slice(i, i + 16).map(async (id) => {
        const r = await fetch(`${url}/status/${id}`, { signal: AbortSignal.timeout(10000) }).catch(() => null);
        if (!r || r.status !== 200) return;
        const s = (await r.json()).status;
        if (s !== 'queued' && s !== 'running') {
          st.accepted.set(id, s);
          pending.delete(id);
        }
      }));
    }
    if (pending.size) await sleep(500);
  }
  return pending.size;
}

async function counted(phase, acked) {
  let state;
  const ok = await untilTrue('events counted', 90000, async () => {
    const r = await fetch(`${url}/fn/count?phase=${phase}`, { signal: AbortSignal.timeout(10000) });
    if (r.status !== 200) return false;
    state = await r.json();
    return [...acked].every((id) => id in state.seen);
  });
  const ids = Object.keys(state?.seen ?? {});
  return {
    lostIds: [...acked].filter((id) => !(id in (state?.seen ?? {}))),
    lost: [...acked].filter((id) => !(id in (state?.seen ?? {}))).length,
    dup: (state?.n ?? 0) - ids.length + ids.filter((id) => state.seen[id] !== 1).length,
    n: state?.n ?? 0,
    settled: ok,
  };
}

// When a check fails: what the platform and NATS hold, for the post-mortem
// (written beside the logs, in the run directory).
async function evidence(phase, lostIds) {
  const dir = process.env.PICLOUD_CLUSTER_DIR;
  if (!dir) return;
  const get = async (path) => api('GET', path).catch((e) => ({ error: String(e) }));
  const base = Number(process.env.PICLOUD_CLUSTER_PORT);
  const jsz = {};
  for (const n of [1, 2, 3]) {
    const r = await fetch(`http://127.0.0.1:${base + 30 + n}/jsz?streams=true&consumers=true&config=true`).catch(() => null);
    jsz[`nats${n}`] = r ? await r.json().catch(() => null) : null;
  }
  const out = {
    phase,
    lost: lostIds,
    dead_letters: await get('/api/v1/dead-letters'),
    jobs: await get('/api/v1/jobs'),
    hop1: await get('/api/v1/invocations?script=hop1&limit=1000'),
    count: await get('/api/v1/invocations?script=count&limit=1000'),
    tick: await get('/api/v1/invocations?script=tick&limit=1000'),
    jsz,
  };
  const file = `${dir}/evidence-${phase}.json`;
  writeFileSync(file, JSON.stringify(out, null, 1));
  console.error(`[suite] ${phase}: evidence in ${file}`);
}

async function main() {
  await setup();
  const names = process.env.SUITE_FAULTS ? process.env.SUITE_FAULTS.split(',') : Object.keys(FAULTS);
  const rows = [];
  let failed = false;
  let p = 0;
  for (const name of names) {
    const fault = FAULTS[name];
    if (!fault) throw new Error(`unknown fault ${name}; known: ${Object.keys(FAULTS).join(', ')}`);
    const phase = `p${p++}`;
    phaseStart = now();
    const st = startLoad(phase);
    await sleep(phaseMs);
    const t0 = now();
    await fault();
    const readyOk = await untilTrue('ready', 120000, allReady);
    const ready = now() - t0;
    await sleep(phaseMs);
    st.stop = true;
    await st.done;
    const lastErr = st.errTimes.length ? Math.max(...st.errTimes) : t0;
    const disruption = Math.max(0, lastErr - t0);
    const unfinished = await finalStates(st);
    const notOk = [...st.accepted.values()].filter((s) => s !== null && s !== 'ok').length;
    const ev = await counted(phase, st.acked);
    const requests = st.sync + st.emitted + Object.values(st.asyncStatus).reduce((a, b) => a + b, 0);
    const problems = [];
    if (!readyOk) problems.push('not ready again within 120 s');
    if (st.syncBad.length) problems.push(`unexpected answers ${JSON.stringify(st.syncBad.slice(0, 5))}`);
    if (st.hangs) problems.push(`${st.hangs} sync calls past the deadline`);
    if (unfinished) problems.push(`${unfinished} accepted async calls never finished`);
    if (notOk) problems.push(`${notOk} async calls ended not ok`);
    if (st.keyMismatch) problems.push(`${st.keyMismatch} Idempotency-Key retries got another invocation`);
    if (ev.lost) problems.push(`${ev.lost} acknowledged events not counted`);
    if (ev.dup) problems.push(`${ev.dup} events counted twice`);
    if (problems.length) {
      failed = true;
      if (ev.lost) console.error(`[suite] ${name}: acknowledged, not counted: ${ev.lostIds.join(' ')}`);
      await evidence(phase, ev.lostIds);
    }
    const row = {
      fault: name,
      requests,
      sync: JSON.stringify(st.syncStatus),
      async: `${st.accepted.size} accepted (${JSON.stringify(st.asyncStatus)})`,
      events: `${st.acked.size} acked / ${ev.n} counted (calls ${JSON.stringify(st.emitStatus)})`,
      lost: ev.lost + unfinished,
      duplicated: ev.dup,
      disruption: (disruption / 1000).toFixed(1),
      ready: (ready / 1000).toFixed(1),
      result: problems.length ? `FAIL: ${problems.join('; ')}` : 'ok',
    };
    rows.push(row);
    console.error(`[suite] ${name}: ${row.result} (${row.requests} requests, disruption ${row.disruption} s, ready ${row.ready} s)`);
  }
  // Cron over the whole run: no instant twice, none missing.
  const ticks = await (await fetch(`${url}/fn/tick`)).json();
  const instants = Object.keys(ticks).sort();
  const twice = instants.filter((k) => ticks[k] !== 1).length;
  let missing = 0;
  if (instants.length > 1) {
    const first = Date.parse(instants[0]);
    const last = Date.parse(instants[instants.length - 1]);
    missing = (last - first) / 1000 + 1 - instants.length;
    const fired = new Set(instants.map((k) => Date.parse(k)));
    const gaps = [];
    for (let t = first; t <= last; t += 1000) if (!fired.has(t)) gaps.push(new Date(t).toISOString());
    if (gaps.length) {
      console.error(`[suite] cron instants missing: ${gaps.join(' ')}`);
      await evidence('cron', gaps);
    }
  }
  const cron = `cron: ${instants.length} instants fired, ${twice} more than once, ${missing} missing`;
  if (twice || missing || instants.length < 2) failed = true;

  console.log('| fault | requests | sync answers | async | events | lost | duplicated | errors seen for (s) | all ready after (s) | result |');
  console.log('|---|---|---|---|---|---|---|---|---|---|');
  for (const r of rows) {
    console.log(`| ${r.fault} | ${r.requests} | ${r.sync} | ${r.async} | ${r.events} | ${r.lost} | ${r.duplicated} | ${r.disruption} | ${r.ready} | ${r.result} |`);
  }
  console.log(`\n${cron}`);
  process.exit(failed ? 1 : 0);
}

main().catch((e) => {
  console.error(e);
  process.exit(2);
});
