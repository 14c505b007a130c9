import { describe, expect, it } from 'vitest';
import { diffLines } from './diff';
import { ago, duration, formatInZone, isZone, shortId } from './format';
import { flattenTree, layoutFlow, polyline } from './flow';
import { StringStream } from '@codemirror/language';
import { tokenize } from './rhai';
import type { Schemas } from './api/client';

describe('diff', () => {
	it('finds changed, added and removed lines', () => {
		const d = diffLines('a\nb\nc\nd', 'a\nB\nc\nd\ne');
		expect(d.map((x) => x.op + x.text)).toEqual([' a', '-b', '+B', ' c', ' d', '+e']);
		expect(d.find((x) => x.text === 'B')).toMatchObject({ b: 2 });
		expect(d.find((x) => x.text === 'b')).toMatchObject({ a: 2 });
	});
	it('is all context for equal texts and rebuilds both sides', () => {
		const a = 'x\ny\nz';
		expect(diffLines(a, a).every((x) => x.op === ' ')).toBe(true);
		const b = 'y\nq\nz\nw';
		const d = diffLines(a, b);
		expect(d.filter((x) => x.op !== '+').map((x) => x.text).join('\n')).toBe(a);
		expect(d.filter((x) => x.op !== '-').map((x) => x.text).join('\n')).toBe(b);
	});
});

describe('formatting', () => {
	it('shows a firing in the chosen zone', () => {
		const t = '2026-07-01T12:00:00Z';
		expect(formatInZone(t, 'UTC')).toBe('Wed 2026-07-01 12:00:00 UTC');
		expect(formatInZone(t, 'Asia/Tokyo')).toMatch(/^Wed 2026-07-01 21:00:00 (GMT\+9|JST)$/);
		expect(formatInZone('2026-01-01T00:30:00Z', 'America/New_York')).toMatch(/^Wed 2025-12-31 19:30:00 (EST|GMT-5)$/);
	});
	it('knows zones', () => {
		expect(isZone('Europe/Berlin')).toBe(true);
		expect(isZone('Mars/Olympus')).toBe(false);
	});
	it('shortens durations and ages', () => {
		expect(duration(850)).toBe('850 µs');
		expect(duration(12_345)).toBe('12.3 ms');
		expect(duration(4_200_000)).toBe('4.20 s');
		const now = Date.parse('2026-01-01T01:00:00Z');
		expect(ago('2026-01-01T00:59:30Z', now)).toBe('30 s ago');
		expect(ago('2026-01-01T00:00:00Z', now)).toBe('1 h ago');
		expect(ago(null, now)).toBe('—');
	});
	it('shortens ids of one second apart', () => {
		// Two UUIDv7 of the same millisecond: same first 8 digits.
		const a = '019ae0c1-2a3b-7c00-8d11-0123456789ab';
		const b = '019ae0c1-2a3b-7c00-8d11-fedcba987654';
		expect(shortId(a)).toBe('456789ab');
		expect(shortId(a)).not.toBe(shortId(b));
	});
});

describe('charts and graphs', () => {
	it('scales a series into the box', () => {
		expect(polyline([0, 5, 10], 100, 50)).toBe('0.0,50.0 50.0,25.0 100.0,0.0');
		expect(polyline([null, 0], 10, 10)).toBe('0.0,10.0 10.0,10.0');
	});
	it('lays the topology out with edges weighted by count', () => {
		const t: Schemas['Topology'] = {
			topics: [
				{ topic: 'orders', emitters: [{ script: 'shop', count: 100 }], subscribers: [{ script: 'mail', count: 25 }] }
			],
			subscriptions: [
				{ id: '1', script: 'mail', topic: 'orders' },
				{ id: '2', script: 'audit', topic: 'audit.*' }
			]
		};
		const g = layoutFlow(t);
		expect(g.nodes.map((n) => n.id).sort()).toEqual(['e:shop', 's:audit', 's:mail', 't:audit.*', 't:orders']);
		const w = Object.fromEntries(g.edges.map((e) => [`${e.from}>${e.to}`, e.width]));
		expect(w['e:shop>t:orders']).toBeCloseTo(10);
		expect(w['t:orders>s:mail']).toBeCloseTo(1.5 + 8.5 * 0.5);
		expect(w['t:audit.*>s:audit']).toBeCloseTo(1.5);
		expect(g.edges).toHaveLength(3);
	});
	it('flattens a trace tree depth first', () => {
		const node = (id: string, children: Schemas['InvocationTree'][] = []) =>
			({ id, script: id, status: 'ok', duration_us: 1, trigger: 'event', children }) as unknown as Schemas['InvocationTree'];
		const rows = flattenTree(node('a', [node('b', [node('c')]), node('d')]));
		expect(rows.map((r) => `${r.depth}${r.id}`)).toEqual(['0a', '1b', '2c', '1d']);
	});
});

describe('rhai highlighting', () => {
	it('classifies keywords, strings, numbers, comments and calls', () => {
		const toks = tokenize('let x = 0x1F + 2.5; // note\nfn f(a) { print(`multi\nline`) } /* c */ "s\\"q"', (l) => new StringStream(l, 4, 2));
		const style = (t: string) => toks.find(([text]) => text === t)?.[1];
		expect(style('let')).toBe('keyword');
		expect(style('0x1F')).toBe('number');
		expect(style('2.5')).toBe('number');
		expect(style('// note')).toBe('comment');
		expect(style('fn')).toBe('keyword');
		expect(style('f')).toBe('function');
		expect(style('x')).toBe('variableName');
		expect(style('`multi')).toBe('string');
		expect(style('line`')).toBe('string');
		expect(style('/* c */')).toBe('comment');
		expect(style('"s\\"q"')).toBe('string');
	});
});
