import { describe, expect, it } from 'vitest';
import { SseParser, streamSse, type SseEvent } from './sse';
import { logEntry } from './logs';

describe('SSE parsing', () => {
	it('parses events split across chunks anywhere', () => {
		const text = 'id: 7-0\nevent: line\ndata: {"a":1}\n\n: keepalive\n\nevent: end\r\ndata: x\r\ndata: y\r\n\r\n';
		for (let cut = 0; cut <= text.length; cut++) {
			const p = new SseParser();
			const got = [...p.push(text.slice(0, cut)), ...p.push(text.slice(cut))];
			expect(got).toEqual([
				{ event: 'line', data: '{"a":1}', id: '7-0' },
				{ event: 'end', data: 'x\ny', id: '7-0' }
			]);
			expect(p.lastId).toBe('7-0');
		}
	});
	it('defaults the event name and ignores unknown fields', () => {
		const p = new SseParser();
		expect(p.push('retry: 10\nfoo\ndata:no-space\n\n')).toEqual([{ event: 'message', data: 'no-space', id: null }]);
	});
	it('streams a fetch body with the given headers until it ends', async () => {
		let auth: string | null = null;
		const body = new ReadableStream<Uint8Array>({
			start(c) {
				const enc = new TextEncoder();
				c.enqueue(enc.encode('event: line\ndata: {"li'));
				c.enqueue(enc.encode('ne":"hi"}\n\n'));
				c.close();
			}
		});
		const f = (async (_u: RequestInfo | URL, init?: RequestInit) => {
			auth = new Headers(init?.headers).get('authorization');
			return new Response(body, { headers: { 'content-type': 'text/event-stream' } });
		}) as typeof fetch;
		const got: SseEvent[] = [];
		await streamSse('/x', { Authorization: 'Bearer t' }, (e) => got.push(e), new AbortController().signal, f);
		expect(auth).toBe('Bearer t');
		expect(got.map((e) => e.data)).toEqual(['{"line":"hi"}']);
	});
	it('turns an error answer into the API error', async () => {
		const f = (async () =>
			new Response('{"error":{"code":"unauthorized","message":"no token"}}', { status: 401 })) as unknown as typeof fetch;
		await expect(streamSse('/x', {}, () => {}, new AbortController().signal, f)).rejects.toThrow('no token');
	});
});

describe('log entries', () => {
	it('shows lines, ends and overflows', () => {
		const line = logEntry({ event: 'line', id: '1-0', data: '{"type":"line","invocation":"abc","attempt":1,"at":"2026-01-01T00:00:00Z","level":"info","line":"hello","id":"1-0"}' });
		expect(line).toMatchObject({ kind: 'info', text: 'hello', invocation: 'abc', id: '1-0' });
		const end = logEntry({ event: 'end', id: '1-1', data: '{"type":"end","invocation":"abc","attempt":1,"at":"2026-01-01T00:00:00Z","status":"ok","http_status":200,"duration_us":1500,"id":"1-1"}' });
		expect(end?.text).toBe('— ok 200 in 1.5 ms');
		expect(logEntry({ event: 'overflow', id: null, data: '{"message":"fell behind"}' })?.text).toBe('[overflow] fell behind');
		expect(logEntry({ event: 'line', id: null, data: 'not json' })).toBeNull();
		expect(logEntry({ event: 'other', id: null, data: '{}' })).toBeNull();
	});
});
