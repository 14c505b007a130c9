// A line diff (longest common subsequence) between two versions.

export type DiffLine = { op: ' ' | '+' | '-'; text: string; a?: number; b?: number };

/** Most cells the table may hold; larger inputs fall back to a plain
 * "all removed, all added" diff rather than freezing the tab. */
const MAX_CELLS = 4_000_000;

export function diffLines(a: string, b: string): DiffLine[] {
	const x = a.split('\n');
	const y = b.split('\n');
	// Common head and tail are cheap and keep the table small.
	let head = 0;
	while (head < x.length && head < y.length && x[head] === y[head]) head++;
	let tail = 0;
	while (
		tail < x.length - head &&
		tail < y.length - head &&
		x[x.length - 1 - tail] === y[y.length - 1 - tail]
	)
		tail++;
	const xs = x.slice(head, x.length - tail);
	const ys = y.slice(head, y.length - tail);
	const out: DiffLine[] = [];
	for (let i = 0; i < head; i++) out.push({ op: ' ', text: x[i], a: i + 1, b: i + 1 });
	const n = xs.length;
	const m = ys.length;
	if (n * m > MAX_CELLS) {
		xs.forEach((t, i) => out.push({ op: '-', text: t, a: head + i + 1 }));
		ys.forEach((t, j) => out.push({ op: '+', text: t, b: head + j + 1 }));
	} else {
		// lcs[i][j]: LCS length of xs[i..] and ys[j..].
		const lcs = Array.from({ length: n + 1 }, () => new Uint32Array(m + 1));
		for (let i = n - 1; i >= 0; i--)
			for (let j = m - 1; j >= 0; j--)
				lcs[i][j] = xs[i] === ys[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
		let i = 0;
		let j = 0;
		while (i < n || j < m) {
			if (i < n && j < m && xs[i] === ys[j]) {
				out.push({ op: ' ', text: xs[i], a: head + i + 1, b: head + j + 1 });
				i++;
				j++;
			} else if (i < n && (j === m || lcs[i + 1][j] >= lcs[i][j + 1])) {
				// Removals before additions, as `diff -u` shows them.
				out.push({ op: '-', text: xs[i], a: head + i + 1 });
				i++;
			} else {
				out.push({ op: '+', text: ys[j], b: head + j + 1 });
				j++;
			}
		}
	}
	for (let k = tail; k > 0; k--) {
		const ia = x.length - k;
		const ib = y.length - k;
		out.push({ op: ' ', text: x[ia], a: ia + 1, b: ib + 1 });
	}
	return out;
}
