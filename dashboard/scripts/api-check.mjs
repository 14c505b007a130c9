// Fails when src/lib/api/schema.d.ts is not what openapi-typescript makes
// of openapi.json (itself checked against the server by
// `cargo test -p picloud-manager --test openapi_file`).
import { execFileSync } from 'node:child_process';
import { readFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const dir = mkdtempSync(join(tmpdir(), 'picloud-api-'));
try {
	const out = join(dir, 'schema.d.ts');
	execFileSync('npx', ['openapi-typescript', 'openapi.json', '--default-non-nullable', 'false', '-o', out], {
		stdio: ['ignore', 'ignore', 'inherit']
	});
	if (readFileSync(out, 'utf8') !== readFileSync('src/lib/api/schema.d.ts', 'utf8')) {
		console.error('src/lib/api/schema.d.ts is stale: run `npm run api` in dashboard/ and commit it');
		process.exit(1);
	}
	console.log('API types are current');
} finally {
	rmSync(dir, { recursive: true, force: true });
}
