// The typed admin-API client: openapi-fetch over the types generated from
// the server's OpenAPI document (`npm run api`), the admin token from the
// tab's session, and one error type for every failure.
import createClient, { type Middleware } from 'openapi-fetch';
import type { paths, components } from './schema';

export type Schemas = components['schemas'];

const TOKEN_KEY = 'picloud.token';

/** A storage with the two calls we use (sessionStorage in the browser). */
export interface TokenStore {
	getItem(key: string): string | null;
	setItem(key: string, value: string): void;
	removeItem(key: string): void;
}

function store(): TokenStore | null {
	return typeof sessionStorage === 'undefined' ? null : sessionStorage;
}

export function getToken(s: TokenStore | null = store()): string | null {
	return s?.getItem(TOKEN_KEY) ?? null;
}

export function setToken(token: string, s: TokenStore | null = store()): void {
	s?.setItem(TOKEN_KEY, token.trim());
}

export function clearToken(s: TokenStore | null = store()): void {
	s?.removeItem(TOKEN_KEY);
}

/** The `Authorization` header value for a token (none for a blank one). */
export function authHeader(token: string | null): string | null {
	const t = token?.trim();
	return t ? `Bearer ${t}` : null;
}

/** An API failure: the server's `{error: {code, message, details}}`, or
 * a network/format problem with code `network` / `bad_response`. */
export class ApiError extends Error {
	constructor(
		readonly status: number,
		readonly code: string,
		message: string,
		readonly details?: unknown
	) {
		super(message);
		this.name = 'ApiError';
	}

	/** The compile error's position, when the server gave one. */
	get position(): { line: number; column: number } | null {
		const d = this.details as { line?: unknown; column?: unknown } | undefined;
		if (d && typeof d.line === 'number' && typeof d.column === 'number') {
			return { line: d.line, column: d.column };
		}
		return null;
	}
}

/** Turns an error answer (parsed body or raw text) into an `ApiError`. */
export function decodeError(status: number, body: unknown): ApiError {
	if (typeof body === 'string') {
		try {
			body = JSON.parse(body);
		} catch {
			const text = (body as string).trim();
			return new ApiError(status, 'bad_response', text || `HTTP ${status}`);
		}
	}
	const e = (body as { error?: { code?: unknown; message?: unknown; details?: unknown } })
		?.error;
	if (e && typeof e.code === 'string' && typeof e.message === 'string') {
		return new ApiError(status, e.code, e.message, e.details);
	}
	return new ApiError(status, 'bad_response', `HTTP ${status}`);
}

/** Called when the server refuses the token (the layout sends to login). */
let onUnauthorized: () => void = () => {};
export function setUnauthorizedHandler(f: () => void): void {
	onUnauthorized = f;
}

const auth: Middleware = {
	onRequest({ request }) {
		const h = authHeader(getToken());
		if (h) request.headers.set('Authorization', h);
		return request;
	},
	onResponse({ response }) {
		if (response.status === 401) onUnauthorized();
		return response;
	}
};

export const client = createClient<paths>({ baseUrl: '' });
client.use(auth);

/** Unwraps an openapi-fetch answer: the data, or a thrown `ApiError`. */
export async function must<T>(
	p: Promise<{ data?: T; error?: unknown; response: Response }>
): Promise<T> {
	let r;
	try {
		r = await p;
	} catch (e) {
		throw new ApiError(0, 'network', `cannot reach PiCloud: ${(e as Error).message}`);
	}
	if (!r.response.ok) throw decodeError(r.response.status, r.error);
	return r.data as T;
}

/** Checks a token against the API (for the login form). */
export async function tokenWorks(token: string, f: typeof fetch = fetch): Promise<boolean> {
	const h = authHeader(token);
	if (!h) return false;
	const r = await f('/api/v1/scripts', { headers: { Authorization: h } });
	if (r.status === 401) return false;
	if (!r.ok) throw decodeError(r.status, await r.text());
	return true;
}

/** Runs a page's API work: its result, or `undefined` after passing the
 * failure's message to `fail` (the page shows it). */
export async function attempt<T>(f: () => Promise<T>, fail: (message: string) => void): Promise<T | undefined> {
	try {
		return await f();
	} catch (e) {
		fail((e as Error).message);
		return undefined;
	}
}
