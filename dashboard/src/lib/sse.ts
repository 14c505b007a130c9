// Server-Sent Events over fetch: EventSource cannot send an
// `Authorization` header, so the stream is read and parsed here.

export interface SseEvent {
	event: string;
	data: string;
	id: string | null;
}

/** An incremental parser of the `text/event-stream` format: feed it text
 * chunks as they arrive, it returns the events each completes. */
export class SseParser {
	private buf = '';
	private data: string[] = [];
	private event = '';
	private id: string | null = null;
	/** The last id seen (for `Last-Event-ID` on a reconnect). */
	lastId: string | null = null;

	push(chunk: string): SseEvent[] {
		this.buf += chunk;
		const out: SseEvent[] = [];
		for (;;) {
			const m = /\r\n|\r|\n/.exec(this.buf);
			// A lone trailing \r may be half of \r\n: wait for more.
			if (!m || (m[0] === '\r' && m.index === this.buf.length - 1)) break;
			const line = this.buf.slice(0, m.index);
			this.buf = this.buf.slice(m.index + m[0].length);
			const ev = this.line(line);
			if (ev) out.push(ev);
		}
		return out;
	}

	private line(line: string): SseEvent | null {
		if (line === '') {
			if (this.data.length === 0) {
				this.event = '';
				return null;
			}
			const ev = { event: this.event || 'message', data: this.data.join('\n'), id: this.id };
			this.data = [];
			this.event = '';
			return ev;
		}
		if (line.startsWith(':')) return null;
		const colon = line.indexOf(':');
		const field = colon < 0 ? line : line.slice(0, colon);
		let value = colon < 0 ? '' : line.slice(colon + 1);
		if (value.startsWith(' ')) value = value.slice(1);
		switch (field) {
			case 'data':
				this.data.push(value);
				break;
			case 'event':
				this.event = value;
				break;
			case 'id':
				if (!value.includes('\0')) {
					this.id = value;
					this.lastId = value;
				}
				break;
		}
		return null;
	}
}

/** Reads an SSE response with the given headers until `signal` aborts or
 * the stream ends; calls `onEvent` for each event. */
export async function streamSse(
	url: string,
	headers: Record<string, string>,
	onEvent: (e: SseEvent) => void,
	signal: AbortSignal,
	f: typeof fetch = fetch,
	onOpen: () => void = () => {}
): Promise<void> {
	const r = await f(url, { headers: { Accept: 'text/event-stream', ...headers }, signal });
	if (!r.ok || !r.body) {
		const { decodeError } = await import('./api/client');
		throw decodeError(r.status, await r.text());
	}
	onOpen();
	const parser = new SseParser();
	const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
	for (;;) {
		const { value, done } = await reader.read();
		if (done) return;
		for (const ev of parser.push(value)) onEvent(ev);
	}
}
