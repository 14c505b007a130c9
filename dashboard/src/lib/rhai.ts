// Rhai syntax highlighting for CodeMirror 6: a small stream tokenizer.
import type { StreamParser, StringStream } from '@codemirror/language';

export const KEYWORDS = new Set([
	'let', 'const', 'if', 'else', 'switch', 'do', 'while', 'loop', 'until', 'for', 'in',
	'continue', 'break', 'return', 'throw', 'try', 'catch', 'fn', 'private', 'import',
	'export', 'as', 'global', 'this', 'is_shared', 'Fn', 'call', 'curry', 'type_of',
	'print', 'debug', 'eval'
]);
const ATOMS = new Set(['true', 'false', '()']);

interface State {
	/** Inside a `/* … *\/` comment (nesting depth: Rhai's nest). */
	comment: number;
	/** Inside a back-tick string that spans lines. */
	backtick: boolean;
}

function blockComment(stream: StringStream, state: State): string {
	while (!stream.eol()) {
		if (stream.match('/*')) state.comment++;
		else if (stream.match('*/')) {
			state.comment--;
			if (state.comment === 0) break;
		} else stream.next();
	}
	return 'comment';
}

function backtick(stream: StringStream, state: State): string {
	while (!stream.eol()) {
		const c = stream.next();
		if (c === '`') {
			state.backtick = false;
			break;
		}
	}
	return 'string';
}

export const rhai: StreamParser<State> = {
	name: 'rhai',
	startState: () => ({ comment: 0, backtick: false }),
	token(stream, state) {
		if (state.comment > 0) return blockComment(stream, state);
		if (state.backtick) return backtick(stream, state);
		if (stream.eatSpace()) return null;
		if (stream.match('//')) {
			stream.skipToEnd();
			return 'comment';
		}
		if (stream.match('/*')) {
			state.comment = 1;
			return blockComment(stream, state);
		}
		const ch = stream.peek();
		if (ch === '"') {
			stream.next();
			let escaped = false;
			while (!stream.eol()) {
				const c = stream.next();
				if (c === '"' && !escaped) break;
				escaped = !escaped && c === '\\';
			}
			return 'string';
		}
		if (ch === '`') {
			stream.next();
			state.backtick = true;
			return backtick(stream, state);
		}
		if (ch === "'") {
			stream.match(/^'(\\.|[^'\\])'/) || stream.next();
			return 'string';
		}
		if (stream.match(/^0x[0-9a-fA-F_]+|^0o[0-7_]+|^0b[01_]+|^\d[\d_]*(\.\d[\d_]*)?([eE][+-]?\d+)?/))
			return 'number';
		if (stream.match(/^#\{/)) return 'bracket';
		if (stream.match(/^[A-Za-z_][A-Za-z0-9_]*/)) {
			const w = stream.current();
			if (KEYWORDS.has(w)) return 'keyword';
			if (ATOMS.has(w)) return 'atom';
			if (stream.peek() === '(') return 'function';
			return 'variableName';
		}
		if (stream.match(/^(==|!=|<=|>=|&&|\|\||\?\?|\?\.|\.\.=?|::|=>|[-+*\/%=<>!&|^?])/))
			return 'operator';
		stream.next();
		return null;
	},
	languageData: { commentTokens: { line: '//', block: { open: '/*', close: '*/' } } }
};

/** Tokens of `source`, for tests: `[text, style]` pairs, spaces dropped. */
export function tokenize(source: string, mk: (line: string) => StringStream): [string, string | null][] {
	const state = rhai.startState!(4);
	const out: [string, string | null][] = [];
	for (const line of source.split('\n')) {
		const s = mk(line);
		while (!s.eol()) {
			const style = rhai.token(s, state);
			const text = s.current();
			if (text.trim()) out.push([text, style]);
			s.start = s.pos;
		}
	}
	return out;
}
