import { describe, expect, it } from 'vitest';
import { ApiError, authHeader, clearToken, decodeError, getToken, setToken, tokenWorks, type TokenStore } from './api/client';

function memory(): TokenStore & { m: Map<string, string> } {
	const m = new Map<string, string>();
	return { m, getItem: (k) => m.get(k) ?? null, setItem: (k, v) => void m.set(k, v), removeItem: (k) => void m.delete(k) };
}

describe('token and header', () => {
	it('keeps the trimmed token and forgets it on logout', () => {
		const s = memory();
		expect(getToken(s)).toBeNull();
		setToken('  abc \n', s);
		expect(getToken(s)).toBe('abc');
		clearToken(s);
		expect(getToken(s)).toBeNull();
	});
	it('makes a bearer header, none for a blank token', () => {
		expect(authHeader('t0k')).toBe('Bearer t0k');
		expect(authHeader('  ')).toBeNull();
		expect(authHeader(null)).toBeNull();
	});
	it('checks a token with the header and tells 401 from other failures', async () => {
		const seen: (string | null)[] = [];
		const f = (status: number, body = '') =>
			(async (_url: RequestInfo | URL, init?: RequestInit) => {
				seen.push(new Headers(init?.headers).get('authorization'));
				return new Response(body, { status });
			}) as typeof fetch;
		expect(await tokenWorks('good', f(200, '[]'))).toBe(true);
		expect(await tokenWorks('bad', f(401))).toBe(false);
		await expect(tokenWorks('x', f(503, '{"error":{"code":"unavailable","message":"down"}}'))).rejects.toThrow('down');
		expect(seen).toEqual(['Bearer good', 'Bearer bad', 'Bearer x']);
	});
});

describe('error decoding', () => {
	it('reads the server error envelope with a compile position', () => {
		const e = decodeError(400, {
			error: { code: 'compile_error', message: 'Expecting )', details: { line: 2, column: 9 } }
		});
		expect(e).toBeInstanceOf(ApiError);
		expect(e.code).toBe('compile_error');
		expect(e.message).toBe('Expecting )');
		expect(e.position).toEqual({ line: 2, column: 9 });
	});
	it('parses a JSON text body and keeps a plain one', () => {
		expect(decodeError(404, '{"error":{"code":"not_found","message":"no such script"}}').code).toBe('not_found');
		const plain = decodeError(502, 'Bad Gateway');
		expect(plain.code).toBe('bad_response');
		expect(plain.message).toBe('Bad Gateway');
		expect(plain.position).toBeNull();
	});
	it('never throws on odd bodies', () => {
		expect(decodeError(500, null).message).toBe('HTTP 500');
		expect(decodeError(500, { error: 'x' }).code).toBe('bad_response');
		expect(decodeError(400, { error: { code: 'x', message: 'm', details: { line: '2' } } }).position).toBeNull();
	});
});
