//! The host API every script gets, beyond Rhai's standard library:
//!
//! - `now()`: the current UTC time as an RFC 3339 string with milliseconds
//!   (`"2026-11-27T14:55:00.123Z"`); `now_ms()`: milliseconds since the Unix
//!   epoch, for arithmetic.
//! - `uuid()`: a random (v4) UUID string.
//! - `json::parse(s)`: JSON text → value (a parse error is a catchable
//!   error); `json::stringify(v)`: value → JSON text.
//!
//! (`log`, `print` and `response` are registered with the engine itself.)

use rhai::{Dynamic, Engine, EvalAltResult, Module, Position};

/// Deepest value `json::stringify` and results serialise. Deeper values are
/// refused with an error instead of recursing towards the stack's end.
pub const MAX_JSON_DEPTH: usize = 128;

pub(crate) fn register(engine: &mut Engine) {
    engine.register_fn("now", || {
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    });
    engine.register_fn("now_ms", || chrono::Utc::now().timestamp_millis());
    engine.register_fn("uuid", || uuid::Uuid::new_v4().to_string());

    let mut json = Module::new();
    json.set_native_fn("parse", |text: &str| parse(text));
    json.set_native_fn("stringify", |value: Dynamic| stringify(&value));
    engine.register_static_module("json", json.into());
}

fn parse(text: &str) -> Result<Dynamic, Box<EvalAltResult>> {
    // serde_json refuses nesting deeper than 128 itself.
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| runtime(format!("json::parse: invalid JSON: {e}")))?;
    rhai::serde::to_dynamic(value)
}

fn stringify(value: &Dynamic) -> Result<String, Box<EvalAltResult>> {
    to_json(value).map_err(|e| runtime(format!("json::stringify: {e}")))
}

/// Serialises a value to JSON after checking, without recursion, that it is
/// not nested deeper than [`MAX_JSON_DEPTH`].
pub fn to_json(value: &Dynamic) -> Result<String, String> {
    if depth_exceeds(value, MAX_JSON_DEPTH) {
        return Err(format!(
            "value is nested deeper than {MAX_JSON_DEPTH} levels"
        ));
    }
    serde_json::to_string(value).map_err(|e| format!("cannot encode as JSON: {e}"))
}

/// True when `value` nests arrays and maps deeper than `max`. The walk stops
/// at `max`, so its own recursion is bounded whatever the value's depth.
pub fn depth_exceeds(value: &Dynamic, max: usize) -> bool {
    fn walk(v: &Dynamic, depth: usize, max: usize) -> bool {
        if v.is_array() {
            if depth > max {
                return true;
            }
            if let Ok(arr) = v.as_array_ref() {
                return arr.iter().any(|item| walk(item, depth + 1, max));
            }
        } else if v.is_map() {
            if depth > max {
                return true;
            }
            if let Ok(map) = v.as_map_ref() {
                return map.values().any(|item| walk(item, depth + 1, max));
            }
        }
        false
    }
    walk(value, 1, max)
}

fn runtime(message: String) -> Box<EvalAltResult> {
    EvalAltResult::ErrorRuntime(message.into(), Position::NONE).into()
}
