// Events of a script's live log (the SSE stream of
// `/api/v1/scripts/{name}/logs?follow=true`) as rows to show.
import type { SseEvent } from './sse';

export interface LogEntry {
	id: string;
	kind: string;
	at: string;
	invocation: string;
	text: string;
}

/** A row for a `line` or `end` event; `null` for anything else. An
 * `overflow` or `error` event becomes a row saying what happened. */
export function logEntry(e: SseEvent): LogEntry | null {
	let d: Record<string, unknown>;
	try {
		d = JSON.parse(e.data);
	} catch {
		return null;
	}
	const id = String(d.id ?? e.id ?? `${Date.now()}-${Math.random()}`);
	const at = String(d.at ?? new Date().toISOString());
	const invocation = String(d.invocation ?? '');
	switch (e.event) {
		case 'line':
			return { id, kind: String(d.level ?? 'info'), at, invocation, text: String(d.line ?? '') };
		case 'end': {
			const dur = typeof d.duration_us === 'number' ? ` in ${(d.duration_us / 1000).toFixed(1)} ms` : '';
			const http = d.http_status ? ` ${d.http_status}` : '';
			const err = d.error ? `: ${d.error}` : '';
			return { id, kind: 'end', at, invocation, text: `— ${d.status}${http}${dur}${err}` };
		}
		case 'overflow':
		case 'error':
			return { id, kind: 'error', at, invocation, text: `[${e.event}] ${d.message ?? JSON.stringify(d)}` };
		default:
			return null;
	}
}
