// The first page load's size, gzipped: index.html plus every script and
// stylesheet it loads before the app runs (the entry, the root layout and
// the overview page, with their static imports). The editor is loaded
// lazily by the script page and is not counted. Fails over the budget.
import { readFileSync, readdirSync } from 'node:fs';
import { gzipSync } from 'node:zlib';
import { join, dirname, relative } from 'node:path';

const BUDGET = 250 * 1024;
const build = new URL('../build/', import.meta.url).pathname;
const gz = (path) => gzipSync(readFileSync(path), { level: 9 }).length;

const html = readFileSync(join(build, 'index.html'), 'utf8');
const start = new Set();
for (const m of html.matchAll(/(?:href|import\()\s*=?\s*["']([^"']+\.(?:js|css))["']/g)) {
	start.add(m[1].replace(/^\/dashboard\//, ''));
}
// Follow static imports (not dynamic ones) from the entry files, and the
// nodes of the root layout and the overview page (0 and 2 by SvelteKit's
// numbering: the layout, the error page, then the routes in order).
const seen = new Set();
const queue = [...start];
const nodes = join(build, '_app/immutable/nodes');
for (const f of readdirSync(nodes)) if (/^(0|2)\./.test(f)) queue.push(`_app/immutable/nodes/${f}`);
while (queue.length) {
	const rel = queue.pop();
	if (seen.has(rel)) continue;
	seen.add(rel);
	if (!rel.endsWith('.js')) continue;
	const src = readFileSync(join(build, rel), 'utf8');
	for (const m of src.matchAll(/(?:^|[;\s}])import\s*(?:[\w${},\s*]+from\s*)?["']([^"']+)["']/g)) {
		queue.push(relative(build, join(dirname(join(build, rel)), m[1])));
	}
	for (const m of src.matchAll(/["']([^"']+\.css)["']/g)) {
		const css = relative(build, join(dirname(join(build, rel)), m[1]));
		try {
			readFileSync(join(build, css));
			queue.push(css);
		} catch {}
	}
}
let total = gz(join(build, 'index.html'));
for (const rel of seen) total += gz(join(build, rel));
const lazy = readdirSync(join(build, '_app/immutable/chunks'))
	.map((f) => `_app/immutable/chunks/${f}`)
	.filter((f) => f.endsWith('.js') && !seen.has(f))
	.reduce((n, f) => n + gz(join(build, f)), 0);
const kb = (n) => (n / 1024).toFixed(1);
console.log(`first page load: ${kb(total)} KB gzipped in ${seen.size + 1} files (budget ${kb(BUDGET)} KB)`);
console.log(`loaded later (other pages, the editor): ${kb(lazy)} KB gzipped`);
if (total > BUDGET) {
	console.error('over the bundle budget');
	process.exit(1);
}
