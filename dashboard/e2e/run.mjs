// End-to-end: Debian's chromium (driven by playwright-core, no downloaded
// browser) against a real `picloud up` on a free port, with its own
// database on the test Postgres and its own NATS prefix. Takes screenshots
// of the main pages (into a temporary folder, or the one E2E_SCREENSHOTS
// names: `E2E_SCREENSHOTS=docs/screenshots` refreshes the README's).
// Exits non-zero on the first failure.
//
//   PICLOUD_BIN                 the binary (default: the debug build)
//   PICLOUD_TEST_DATABASE_URL   Postgres to create the database in
//   PICLOUD_TEST_NATS_URL       NATS with JetStream
//   CHROMIUM                    the browser (default /usr/bin/chromium)
//   E2E_HEADED=1                watch it run
//   E2E_SCREENSHOTS             where the screenshots go (relative to the repository)
import { spawn, execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, mkdirSync, rmSync, createWriteStream, readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { chromium } from 'playwright-core';

const root = resolve(import.meta.dirname, '../..');
const target = process.env.CARGO_TARGET_DIR ?? join(root, 'target');
const bin = process.env.PICLOUD_BIN ?? join(target, 'debug/picloud');
const dbAdmin = process.env.PICLOUD_TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';
const natsUrl = process.env.PICLOUD_TEST_NATS_URL ?? 'nats://127.0.0.1:4222';
const started = Date.now();

const id = randomBytes(8).toString('hex');
const db = `picloud_test_e2e_${id}`;
const token = `e2e-${randomBytes(16).toString('hex')}`;
const work = mkdtempSync(join(tmpdir(), 'picloud-e2e-'));
const shots = process.env.E2E_SCREENSHOTS ? resolve(root, process.env.E2E_SCREENSHOTS) : join(work, 'screenshots');
let server = null;
let browser = null;

function log(msg) {
	console.log(`e2e ${((Date.now() - started) / 1000).toFixed(1).padStart(5)} s  ${msg}`);
}

async function freePort() {
	return new Promise((ok, fail) => {
		const s = createServer();
		s.listen(0, '127.0.0.1', () => {
			const { port } = s.address();
			s.close(() => ok(port));
		});
		s.on('error', fail);
	});
}

/** Polls `f` until it returns a truthy value (or throws after `ms`). */
async function until(what, f, ms = 20_000) {
	const end = Date.now() + ms;
	let last;
	for (;;) {
		try {
			const v = await f();
			if (v) return v;
		} catch (e) {
			last = e;
		}
		if (Date.now() > end) throw new Error(`timed out waiting for ${what}${last ? `: ${last.message}` : ''}`);
		await new Promise((r) => setTimeout(r, 100));
	}
}

function psql(sql) {
	execFileSync('psql', [dbAdmin, '-qtAc', sql], { stdio: ['ignore', 'ignore', 'inherit'] });
}

async function cleanup() {
	await browser?.close().catch(() => {});
	if (server && server.exitCode === null) {
		server.kill('SIGTERM');
		await new Promise((r) => server.once('exit', r));
	}
	try {
		psql(`DROP DATABASE IF EXISTS "${db}" WITH (FORCE)`);
	} catch {}
	rmSync(work, { recursive: true, force: true });
}

async function main() {
	psql(`CREATE DATABASE "${db}"`);
	const port = await freePort();
	const base = `http://127.0.0.1:${port}`;
	const out = createWriteStream(join(work, 'picloud.log'));
	server = spawn(bin, ['up'], {
		env: {
			...process.env,
			PICLOUD_DATABASE_URL: dbAdmin.replace(/\/[^/]*$/, `/${db}`),
			PICLOUD_NATS_URL: natsUrl,
			PICLOUD_ADMIN_TOKEN: token,
			PICLOUD_LISTEN: `127.0.0.1:${port}`,
			PICLOUD_DATA_DIR: join(work, 'data'),
			PICLOUD_PREFIX: `t${id.slice(0, 12)}`,
			PICLOUD_DASHBOARD_DIR: join(root, 'dashboard/build'),
			PICLOUD_RETRY_BASE_MS: '50',
			PICLOUD_RETRY_MAX_MS: '500',
			RUST_LOG: process.env.RUST_LOG ?? 'warn'
		},
		stdio: ['ignore', 'pipe', 'pipe']
	});
	server.stdout.pipe(out);
	server.stderr.pipe(out);
	await until('picloud up to be ready', async () => (await fetch(`${base}/readyz`)).ok, 60_000);
	log(`picloud up serves on ${base}`);

	const api = async (method, path, body) => {
		const r = await fetch(`${base}/api/v1${path}`, {
			method,
			headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
			body: body === undefined ? undefined : JSON.stringify(body)
		});
		const text = await r.text();
		if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${text}`);
		return text ? JSON.parse(text) : null;
	};
	const call = async (path) => (await fetch(`${base}/fn/${path}`)).text();

	browser = await chromium.launch({
		executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
		headless: process.env.E2E_HEADED !== '1',
		args: ['--no-sandbox', '--disable-dev-shm-usage']
	});
	const context = await browser.newContext({ viewport: { width: 1280, height: 820 }, colorScheme: 'light' });
	context.setDefaultTimeout(15_000);
	const page = await context.newPage();
	const errors = [];
	page.on('pageerror', (e) => errors.push(e.message));
	mkdirSync(shots, { recursive: true });
	const shot = async (p, name) => {
		await p.evaluate(() => window.scrollTo(0, 0));
		await p.screenshot({ path: join(shots, `${name}.png`) });
	};
	const url = (path) => `${base}/dashboard${path}`;

	// What the first visit costs on the wire: every response from opening
	// /dashboard to the overview shown, API answers included.
	const cdp = await context.newCDPSession(page);
	await cdp.send('Network.enable');
	let wire = 0;
	let appBytes = 0;
	const urls = new Map();
	cdp.on('Network.responseReceived', (e) => urls.set(e.requestId, e.response.url));
	cdp.on('Network.loadingFinished', (e) => {
		wire += e.encodedDataLength;
		if (urls.get(e.requestId)?.includes('/dashboard')) appBytes += e.encodedDataLength;
	});

	// ---- log in (a wrong token first) ----------------------------------------
	await page.goto(url('/'));
	await page.waitForURL(/\/dashboard\/login/);
	await page.getByLabel('Admin token').fill('wrong');
	await page.getByRole('button', { name: 'Log in' }).click();
	await page.getByRole('alert').filter({ hasText: 'not the admin token' }).waitFor();
	await page.getByLabel('Admin token').fill(token);
	await page.keyboard.press('Enter');
	await page.getByRole('heading', { name: 'Overview' }).waitFor();
	await page.waitForLoadState('networkidle');
	await cdp.detach();
	log(`logged in; first visit to the overview: ${(appBytes / 1024).toFixed(1)} KB of app files, ${(wire / 1024).toFixed(1)} KB with API answers, on the wire`);

	// ---- a compile error marked, then fixed ----------------------------------
	await page.goto(url('/scripts/hello?new=1'));
	const editor = page.locator('.cm-content');
	await editor.waitFor();
	const setSource = async (text) => {
		await editor.click();
		await page.keyboard.press('ControlOrMeta+a');
		await page.keyboard.press('Delete');
		await page.keyboard.insertText(text);
	};
	await setSource('log("starting");\nlet x = (1 + ;\n"v1"');
	await page.getByRole('button', { name: 'Deploy' }).click();
	const deployError = page.getByTestId('deploy-error');
	await deployError.waitFor();
	const message = await deployError.innerText();
	if (!/line 2, column \d+/.test(message)) throw new Error(`the compile error has no position: ${message}`);
	await page.locator('.cm-error-line').waitFor();
	await page.locator('.cm-error-mark').waitFor();
	await shot(page, 'compile-error');
	log(`compile error marked (${message.split('\n')[0]})`);

	await setSource('let who = request.query.who ?? "world";\nlog(`hello from v1 to ${who}`);\n`v1: ${who}`');
	await page.keyboard.press('ControlOrMeta+s');
	await page.getByRole('status').filter({ hasText: 'Deployed v1' }).waitFor();
	if (await page.locator('.cm-error-mark').count()) throw new Error('the error marker stayed after a good deploy');
	await until('v1 served', async () => (await call('hello?who=a')) === 'v1: a');
	log('fixed and deployed v1');

	// ---- live tail open in a second tab; invoke from the panel ---------------
	// A tab opened from the dashboard (sessionStorage is per tab: it copies it).
	const [tail] = await Promise.all([
		context.waitForEvent('page'),
		page.evaluate((u) => window.open(u), url('/scripts/hello/logs'))
	]);
	await until('the tail to connect', async () => { const s = await tail.getByTestId('log-status').innerText(); if (s.startsWith('disconnected')) throw new Error(s); return s === 'live'; }, 10_000).catch(async (e) => { throw new Error(e.message + ' status=' + (await tail.getByTestId('log-status').innerText())); });
	await page.getByLabel(/Path and query/).fill('?who=panel');
	await page.getByRole('button', { name: 'Send' }).click();
	const sent = Date.now();
	const result = page.getByTestId('invoke-result');
	await result.waitFor();
	const body = await page.getByTestId('invoke-body').innerText();
	if (body !== 'v1: panel') throw new Error(`the invoke panel shows ${JSON.stringify(body)}`);
	if (!(await result.innerText()).includes('200')) throw new Error('the invoke panel shows no 200');
	await tail.getByTestId('live-log').getByText('hello from v1 to panel').waitFor({ timeout: 2_000 });
	log(`invoked from the panel; its log line was in the live tail after ${Date.now() - sent} ms`);
	await shot(page, 'script');
	// Pause holds lines back; resume shows them.
	await tail.getByRole('button', { name: 'Pause' }).click();
	await call('hello?who=paused');
	await tail.getByRole('button', { name: /Resume \(\d+ held\)/ }).filter({ hasText: /[1-9]/ }).waitFor();
	if (await tail.getByText('hello from v1 to paused').count()) throw new Error('a paused tail showed a line');
	await tail.getByRole('button', { name: /Resume/ }).click();
	await tail.getByText('hello from v1 to paused').waitFor();
	await tail.getByLabel('Filter').fill('panel');
	await until('the filter to hide other lines', async () => (await tail.getByText('hello from v1 to paused').count()) === 0);
	await shot(tail, 'live-log');
	await tail.close();
	log('live tail pauses, resumes and filters');

	// ---- v2, diff, roll back to v1 --------------------------------------------
	await setSource('let who = request.query.who ?? "world";\nlog(`hello from v2 to ${who}`);\n`v2: ${who}`');
	await page.getByRole('button', { name: 'Deploy' }).click();
	await page.getByRole('status').filter({ hasText: 'Deployed v2' }).waitFor();
	await until('v2 served', async () => (await call('hello?who=b')) === 'v2: b');
	await page.getByLabel('Diff from').selectOption('1');
	await page.getByLabel('Diff to').selectOption('2');
	await page.getByRole('button', { name: 'Diff' }).click();
	const diff = await page.getByTestId('diff').innerText();
	if (!diff.includes('- log(`hello from v1') || !diff.includes('+ log(`hello from v2'))
		throw new Error(`the diff is wrong:\n${diff}`);
	await page.getByRole('button', { name: 'Roll back to v1' }).click();
	await page.getByRole('status').filter({ hasText: 'Rolled back to v1' }).waitFor();
	await until('v1 served again after the rollback', async () => (await call('hello?who=c')) === 'v1: c');
	log('diffed v1 and v2, rolled back to v1 and v1 is served');

	// ---- a schedule with its next firings ------------------------------------
	await page.goto(url('/schedules'));
	await page.getByLabel('Script').selectOption('hello');
	await page.getByLabel(/^Cron/).fill('0 9 * * *');
	await page.getByLabel('Time zone').fill('Asia/Tokyo');
	const preview = page.getByTestId('preview').locator('li');
	await until('five firings at 09:00 in Tokyo', async () => {
		const items = await preview.allInnerTexts();
		return items.length === 5 && items.every((t) => t.includes('09:00:00'));
	});
	await page.getByRole('button', { name: 'Create' }).click();
	await page.getByRole('cell', { name: '0 9 * * *' }).waitFor();
	await shot(page, 'schedules');
	const [schedule] = await api('GET', '/schedules');
	if (schedule.timezone !== 'Asia/Tokyo') throw new Error('the schedule was not created in its zone');
	await page.getByRole('button', { name: 'Pause' }).click();
	await page.getByRole('button', { name: 'Resume' }).waitFor();
	log('schedule created with its next five firings; paused');

	// ---- a dead letter replayed ------------------------------------------------
	await api('PUT', '/scripts/fails', { source: 'throw "no stock"' });
	await api('PUT', '/scripts/orders', { source: 'emit("e2e.orders", #{ id: 1 }); "queued"' });
	await api('POST', '/subscriptions', { script: 'fails', topic: 'e2e.orders', max_attempts: 1 });
	await until('orders served', async () => (await call('orders')) === 'queued');
	const [letter] = await until('a dead letter', async () => {
		const d = await api('GET', '/dead-letters');
		return d.length ? d : null;
	});
	await page.goto(url('/dead-letters'));
	await page.getByRole('cell', { name: /no stock/ }).first().waitFor();
	await page.getByRole('button', { name: 'Inspect' }).first().click();
	await page.getByText(letter.invocation_id).first().waitFor();
	await shot(page, 'dead-letters');
	await page.getByRole('button', { name: 'Replay' }).first().click();
	await page.getByRole('status').filter({ hasText: 'Replayed' }).waitFor();
	await until('the dead letter marked replayed', async () => (await api('GET', `/dead-letters/${letter.id}`)).replayed_at);
	log('dead letter inspected and replayed');

	// ---- a three-hop chain's trace tree ----------------------------------------
	await api('PUT', '/scripts/hop-a', { source: 'emit("e2e.hop1", #{}); "a"' });
	await api('PUT', '/scripts/hop-b', { source: 'emit("e2e.hop2", #{}); log("b")' });
	await api('PUT', '/scripts/hop-c', { source: 'log("c reached")' });
	await api('POST', '/subscriptions', { script: 'hop-b', topic: 'e2e.hop1' });
	await api('POST', '/subscriptions', { script: 'hop-c', topic: 'e2e.hop2' });
	await until('hop-a served', async () => (await call('hop-a')) === 'a');
	const [leaf] = await until('the third hop to run', async () => {
		const l = await api('GET', '/invocations?script=hop-c');
		return l.length ? l : null;
	});
	await page.goto(url(`/invocations/${leaf.id}`));
	const tree = page.getByTestId('trace-tree').locator('li');
	await until('the whole chain in the tree', async () => (await tree.count()) === 3);
	const scripts = (await tree.allInnerTexts()).map((t) => t.replace('└ ', '').split(/\s/)[0]);
	if (scripts.join(' ') !== 'hop-a hop-b hop-c') throw new Error(`the tree is ${scripts}`);
	await shot(page, 'trace');
	await page.getByTestId('trace-tree').getByRole('link', { name: 'hop-b' }).click();
	await page.waitForURL(/\/invocations\//);
	await page.getByRole('heading', { name: /Invocation/ }).waitFor();
	await page.getByText('hop-b', { exact: false }).first().waitFor();
	log('trace tree of a three-hop chain shown; a node opens its invocation');

	// ---- the other main pages, for the screenshots ---------------------------
	for (const [path, name, ready] of [
		['/', 'overview', 'Nodes'],
		['/scripts', 'scripts', 'Scripts'],
		['/invocations', 'invocations', 'Invocations'],
		['/flow', 'flow', 'Event flow']
	]) {
		await page.goto(url(path));
		await page.getByRole('heading', { name: ready }).first().waitFor();
		if (name === 'flow') await page.getByTestId('flow').waitFor();
		if (name === 'overview') await page.locator('td', { hasText: 'executor' }).first().waitFor();
		if (name === 'scripts') await page.getByRole('link', { name: 'hop-a' }).waitFor();
		await shot(page, name);
	}
	// Dark mode and a phone-width screen.
	const phone = await browser.newContext({ viewport: { width: 390, height: 760 }, colorScheme: 'dark', isMobile: true });
	const mobile = await phone.newPage();
	await mobile.goto(url('/login'));
	await mobile.getByLabel('Admin token').fill(token);
	await mobile.keyboard.press('Enter');
	await mobile.getByRole('heading', { name: 'Overview' }).waitFor();
	await mobile.getByRole('button', { name: 'Menu' }).click();
	await mobile.getByRole('link', { name: 'Scripts' }).click();
	await mobile.getByRole('link', { name: 'hop-a' }).waitFor();
	await shot(mobile, 'phone-dark');
	await phone.close();
	// Log out: the token is gone, the login page shows.
	await page.getByRole('button', { name: 'Log out' }).click();
	await page.waitForURL(/\/dashboard\/login/);
	if (await page.evaluate(() => sessionStorage.getItem('picloud.token'))) throw new Error('the token outlived the logout');
	log('screenshots taken; phone width and logout work');

	if (errors.length) throw new Error(`the page threw: ${errors.join('; ')}`);
}

try {
	await main();
	console.log(`e2e: dashboard end-to-end passed in ${((Date.now() - started) / 1000).toFixed(0)} s`);
	await cleanup();
} catch (e) {
	console.error(`e2e: FAILED: ${e.message}`);
	try {
		console.error('--- picloud log (tail) ---');
		console.error(readFileSync(join(work, 'picloud.log'), 'utf8').split('\n').slice(-30).join('\n'));
	} catch {}
	await cleanup();
	process.exit(1);
}
