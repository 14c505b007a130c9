//! What the CLI prints: data on stdout (a table for people, `--json` for
//! programs), messages and progress on stderr; colour only on a terminal
//! and never with `NO_COLOR`.

use std::io::{IsTerminal, Write};

use comfy_table::{Cell, Color, ContentArrangement, Table, presets};
use serde_json::Value;

/// `println!` that ends the process quietly when stdout is a closed pipe
/// (`picloud ls | head -1`) instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::output::write_stdout(format!("{}\n", format_args!($($arg)*)).as_bytes())
    };
}
pub(crate) use outln;

/// Writes to stdout; a closed pipe ends the process with 0 (the reader has
/// what it wanted), any other failure with 1.
pub fn write_stdout(bytes: &[u8]) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(bytes).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write the output: {e}");
        std::process::exit(1);
    }
}

/// How to print.
#[derive(Clone, Copy)]
pub struct Out {
    pub json: bool,
    pub colour: bool,
}

impl Out {
    pub fn new(json: bool) -> Self {
        let colour = std::io::stdout().is_terminal()
            && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        Self { json, colour }
    }

    /// Prints `value` as pretty JSON (the API's own fields: stable).
    pub fn json(&self, value: &Value) {
        outln!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
        );
    }

    /// Prints rows as a table with `columns` (JSON field, header); with
    /// `--json`, the rows themselves.
    pub fn table(&self, rows: &Value, columns: &[(&str, &str)]) {
        if self.json {
            return self.json(rows);
        }
        let rows = rows.as_array().cloned().unwrap_or_default();
        if rows.is_empty() {
            eprintln!("(none)");
            return;
        }
        let mut table = Table::new();
        table
            .load_preset(presets::NOTHING)
            .set_content_arrangement(ContentArrangement::Disabled);
        table.set_header(columns.iter().map(|(_, h)| self.header(h)));
        for row in &rows {
            table.add_row(
                columns
                    .iter()
                    .map(|(field, _)| self.cell(field, &row[*field])),
            );
        }
        // Columns start at the margin and are two spaces apart, like `ls -l`
        // and `kubectl get`.
        for column in table.column_iter_mut() {
            column.set_padding((0, 2));
        }
        // Trailing spaces from the last column help nobody.
        for line in table.to_string().lines() {
            outln!("{}", line.trim_end());
        }
    }

    /// Prints one object as `key: value` lines (or JSON).
    pub fn fields(&self, value: &Value, keys: &[&str]) {
        if self.json {
            return self.json(value);
        }
        let width = keys.iter().map(|k| k.len()).max().unwrap_or(0);
        for k in keys {
            let v = &value[*k];
            if v.is_null() {
                continue;
            }
            outln!("{:width$}  {}", format!("{k}:"), text(v), width = width + 1);
        }
    }

    fn header(&self, h: &str) -> Cell {
        let c = Cell::new(h.to_ascii_uppercase());
        if self.colour {
            c.add_attribute(comfy_table::Attribute::Bold)
        } else {
            c
        }
    }

    fn cell(&self, field: &str, v: &Value) -> Cell {
        let c = Cell::new(text(v));
        if !self.colour || field != "status" {
            return c;
        }
        match v.as_str() {
            Some("ok") => c.fg(Color::Green),
            Some("queued") => c.fg(Color::Yellow),
            Some(_) => c.fg(Color::Red),
            None => c,
        }
    }

    /// Green/red words for messages on stderr.
    pub fn paint(&self, s: &str, ok: bool) -> String {
        if !self.colour {
            return s.to_owned();
        }
        let code = if ok { 32 } else { 31 };
        format!("\x1b[{code}m{s}\x1b[0m")
    }
}

/// A JSON value as a person reads it in a table cell.
/// Control characters (a newline in an error, an escape sequence a script
/// put in a message) are shown escaped: a row stays one line and nothing
/// from the server drives the terminal.
pub fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => escape_controls(s, false),
        Value::Array(a) if a.iter().all(Value::is_string) => a
            .iter()
            .filter_map(Value::as_str)
            .map(|s| escape_controls(s, false))
            .collect::<Vec<_>>()
            .join(", "),
        other => escape_controls(&other.to_string(), false),
    }
}

/// `s` with its control characters escaped (`\n`, `\u{1b}`); with
/// `keep_lines`, newlines and tabs stay (for a log printed as it is).
pub fn escape_controls(s: &str, keep_lines: bool) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if keep_lines && (c == '\n' || c == '\t') || !c.is_control() {
            out.push(c);
        } else {
            out.extend(c.escape_debug());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cells_read_like_text() {
        assert_eq!(text(&json!(null)), "-");
        assert_eq!(text(&json!("a")), "a");
        assert_eq!(text(&json!(3)), "3");
        assert_eq!(text(&json!(["x", "y"])), "x, y");
        assert_eq!(text(&json!({"a": 1})), r#"{"a":1}"#);
        assert_eq!(text(&json!("a\nb\u{1b}[31m")), r"a\nb\u{1b}[31m");
        assert_eq!(escape_controls("a\n\tb\u{7}", true), "a\n\tb\\u{7}");
    }
}
