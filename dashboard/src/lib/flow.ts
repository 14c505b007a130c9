// The event-flow graph: scripts on the left emit to topics in the middle,
// which feed their subscribing scripts on the right. Edges are weighted by
// how many events (or jobs) passed.
import type { Schemas } from './api/client';

export interface FlowNode {
	id: string;
	kind: 'emitter' | 'topic' | 'subscriber';
	label: string;
	x: number;
	y: number;
}
export interface FlowEdge {
	from: string;
	to: string;
	count: number;
	width: number;
}
export interface FlowGraph {
	nodes: FlowNode[];
	edges: FlowEdge[];
	width: number;
	height: number;
}

const ROW = 56;
const COLS = { emitter: 110, topic: 400, subscriber: 690 };

/** Lays out the topology in three columns; edge widths 1.5–10 px scale
 * with the square root of the count relative to the largest. */
export function layoutFlow(t: Schemas['Topology']): FlowGraph {
	const emitters = new Set<string>();
	const subscribers = new Set<string>();
	const edges: FlowEdge[] = [];
	const topics = [...t.topics].sort((a, b) => a.topic.localeCompare(b.topic));
	for (const topic of topics) {
		for (const e of topic.emitters) {
			emitters.add(e.script);
			edges.push({ from: `e:${e.script}`, to: `t:${topic.topic}`, count: e.count, width: 0 });
		}
		for (const s of topic.subscribers) {
			subscribers.add(s.script);
			edges.push({ from: `t:${topic.topic}`, to: `s:${s.script}`, count: s.count, width: 0 });
		}
	}
	// Subscriptions that made no job yet still show, with a thin edge.
	const topicNames = new Set(topics.map((x) => x.topic));
	for (const sub of t.subscriptions) {
		subscribers.add(sub.script);
		if (!topicNames.has(sub.topic)) {
			topicNames.add(sub.topic);
			topics.push({ topic: sub.topic, emitters: [], subscribers: [] });
		}
		const from = `t:${sub.topic}`;
		const to = `s:${sub.script}`;
		if (!edges.some((e) => e.from === from && e.to === to)) edges.push({ from, to, count: 0, width: 0 });
	}
	const max = Math.max(1, ...edges.map((e) => e.count));
	for (const e of edges) e.width = 1.5 + 8.5 * Math.sqrt(e.count / max);
	const column = (kind: FlowNode['kind'], names: string[], prefix: string): FlowNode[] =>
		names.map((label, i) => ({ id: `${prefix}:${label}`, kind, label, x: COLS[kind], y: 40 + i * ROW }));
	const nodes = [
		...column('emitter', [...emitters].sort(), 'e'),
		...column('topic', topics.map((x) => x.topic), 't'),
		...column('subscriber', [...subscribers].sort(), 's')
	];
	const rows = Math.max(1, emitters.size, topics.length, subscribers.size);
	return { nodes, edges, width: 800, height: 40 + rows * ROW };
}

/** One row of a trace tree drawn as an indented list. */
export interface TraceRow {
	id: string;
	script: string;
	status: string;
	depth: number;
	duration_us: number;
	trigger: string;
}

/** The tree of an invocation, depth first, each row with its depth. */
export function flattenTree(root: Schemas['InvocationTree'], depth = 0, out: TraceRow[] = []): TraceRow[] {
	out.push({
		id: root.id,
		script: root.script,
		status: root.status,
		depth,
		duration_us: root.duration_us,
		trigger: root.trigger
	});
	for (const c of root.children) flattenTree(c, depth + 1, out);
	return out;
}

/** Chart scaling: the SVG polyline points of `values` in a w×h box
 * (null values break nothing: they are drawn as 0). */
export function polyline(values: (number | null | undefined)[], w: number, h: number, max?: number): string {
	const top = max ?? Math.max(0, ...values.map((v) => v ?? 0));
	const scale = top > 0 ? h / top : 0;
	const step = values.length > 1 ? w / (values.length - 1) : 0;
	return values
		.map((v, i) => `${(i * step).toFixed(1)},${(h - (v ?? 0) * scale).toFixed(1)}`)
		.join(' ');
}
