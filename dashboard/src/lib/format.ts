// Formatting shared by the pages.

/** A firing time as the zone's wall clock, e.g. `Mon 2026-12-07 09:00:00 CET`. */
export function formatInZone(iso: string, timeZone: string): string {
	const d = new Date(iso);
	const parts = new Intl.DateTimeFormat('en-GB', {
		timeZone,
		weekday: 'short',
		year: 'numeric',
		month: '2-digit',
		day: '2-digit',
		hour: '2-digit',
		minute: '2-digit',
		second: '2-digit',
		hourCycle: 'h23',
		timeZoneName: 'short'
	}).formatToParts(d);
	const p = (t: Intl.DateTimeFormatPartTypes) => parts.find((x) => x.type === t)?.value ?? '';
	return `${p('weekday')} ${p('year')}-${p('month')}-${p('day')} ${p('hour')}:${p('minute')}:${p('second')} ${p('timeZoneName')}`;
}

/** Whether the browser knows this IANA zone. */
export function isZone(timeZone: string): boolean {
	try {
		new Intl.DateTimeFormat('en', { timeZone });
		return true;
	} catch {
		return false;
	}
}

/** Microseconds as a short duration: `850 µs`, `12.3 ms`, `4.20 s`. */
export function duration(us: number): string {
	if (us < 1000) return `${us} µs`;
	if (us < 1_000_000) return `${(us / 1000).toFixed(1)} ms`;
	return `${(us / 1_000_000).toFixed(2)} s`;
}

/** How long ago an instant was, relative to `now`. */
export function ago(iso: string | null | undefined, now: number = Date.now()): string {
	if (!iso) return '—';
	const s = Math.round((now - new Date(iso).getTime()) / 1000);
	if (s < 60) return `${Math.max(s, 0)} s ago`;
	if (s < 3600) return `${Math.floor(s / 60)} min ago`;
	if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
	return `${Math.floor(s / 86400)} d ago`;
}

export function pct(x: number): string {
	return `${(x * 100).toFixed(x > 0 && x < 0.01 ? 2 : 1)}%`;
}

/**
 * An id short enough for a table cell that still tells invocations apart:
 * the last 8 hex digits. (A UUIDv7 begins with its timestamp, so the
 * invocations of one second share their first 8 digits.)
 */
export function shortId(id: string): string {
	return id.replace(/-/g, '').slice(-8);
}
