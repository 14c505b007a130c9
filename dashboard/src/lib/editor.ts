// The script editor (CodeMirror 6), loaded lazily by the script page so the
// first page load stays small.
import { EditorState, StateEffect, StateField, type Extension } from '@codemirror/state';
import {
	Decoration,
	EditorView,
	keymap,
	lineNumbers,
	highlightActiveLine,
	drawSelection,
	type DecorationSet
} from '@codemirror/view';
import { defaultKeymap, history, historyKeymap, indentWithTab } from '@codemirror/commands';
import {
	StreamLanguage,
	syntaxHighlighting,
	defaultHighlightStyle,
	bracketMatching,
	indentOnInput
} from '@codemirror/language';
import { rhai } from './rhai';

export interface ErrorMark {
	line: number;
	column: number;
	message: string;
}

const setError = StateEffect.define<ErrorMark | null>();

const errorField = StateField.define<DecorationSet>({
	create: () => Decoration.none,
	update(deco, tr) {
		deco = deco.map(tr.changes);
		for (const e of tr.effects) {
			if (!e.is(setError)) continue;
			if (!e.value) return Decoration.none;
			const doc = tr.state.doc;
			const line = doc.line(Math.min(Math.max(e.value.line, 1), doc.lines));
			const from = Math.min(line.from + Math.max(e.value.column - 1, 0), line.to);
			const to = Math.min(from + 1, line.to);
			const marks = [
				Decoration.line({
					class: 'cm-error-line',
					attributes: { title: e.value.message }
				}).range(line.from)
			];
			if (to > from)
				marks.push(
					Decoration.mark({ class: 'cm-error-mark', attributes: { title: e.value.message } }).range(
						from,
						to
					)
				);
			return Decoration.set(marks, true);
		}
		// Editing clears the stale marker.
		return tr.docChanged ? Decoration.none : deco;
	},
	provide: (f) => EditorView.decorations.from(f)
});

const theme = EditorView.theme({
	'&': { fontSize: '13px', border: '1px solid var(--line)', borderRadius: '6px' },
	'.cm-content': { fontFamily: 'var(--mono)', caretColor: 'var(--fg)' },
	'.cm-gutters': { background: 'var(--bg2)', color: 'var(--muted)', border: 'none' },
	'.cm-error-line': { background: 'var(--err-bg)' },
	'.cm-error-mark': { textDecoration: 'underline wavy var(--err)', background: 'var(--err-bg)' },
	'&.cm-focused': { outline: '2px solid var(--accent)' }
});

export interface Editor {
	/** Marks the compile error (or clears it with `null`). */
	showError(e: ErrorMark | null): void;
	/** Replaces the whole text. */
	setText(text: string): void;
}

export function createEditor(parent: HTMLElement, doc: string, onChange: (text: string) => void): Editor {
	const extensions: Extension[] = [
		lineNumbers(),
		history(),
		drawSelection(),
		highlightActiveLine(),
		indentOnInput(),
		bracketMatching(),
		StreamLanguage.define(rhai),
		syntaxHighlighting(defaultHighlightStyle),
		// Tab indents; Escape then Tab leaves the editor (CodeMirror's rule).
		keymap.of([...defaultKeymap, ...historyKeymap, indentWithTab]),
		errorField,
		theme,
		EditorView.contentAttributes.of({ 'aria-label': 'Script source' }),
		EditorView.updateListener.of((u) => {
			if (u.docChanged) onChange(u.state.doc.toString());
		})
	];
	const view = new EditorView({ state: EditorState.create({ doc, extensions }), parent });
	return {
		showError: (e) => view.dispatch({ effects: setError.of(e) }),
		setText: (text) => {
			if (text !== view.state.doc.toString())
				view.dispatch({ changes: { from: 0, to: view.state.doc.length, insert: text } });
		}
	};
}
