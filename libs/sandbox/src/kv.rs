//! `kv::*` and `emit` for scripts.
//!
//! - `kv::get(key)` → the value, or `()` when the key does not exist.
//! - `kv::set(key, value)`, `kv::delete(key)`: buffered; they commit with the
//!   invocation, only if it succeeds.
//! - `kv::list(prefix)` → the keys starting with `prefix`, sorted (at most
//!   1,000 from the store).
//! - `emit(topic, payload)`: buffered like kv writes; subscribers of matching
//!   topics run once the invocation commits.
//!
//! A script sees only its own keys (the host scopes them by script name).
//! Values and payloads must be JSON-compatible; a key is 1 to 512 bytes.

use std::sync::Arc;

use picloud_core::effects::MAX_KV_KEY_BYTES;
use rhai::{Array, Dynamic, Engine, EvalAltResult, Module, Position};

use crate::capture::Capture;
use crate::hostcall::{HostError, LIMIT_TOKEN};

pub(crate) fn register(engine: &mut Engine, capture: &Arc<Capture>) {
    let mut m = Module::new();
    let c = capture.clone();
    m.set_native_fn("get", move |key: &str| {
        check_key(key)?;
        let value = c.kv_get(key).map_err(host_error)?;
        Ok(value.map_or(Dynamic::UNIT, |v| crate::json_to_dynamic(&v)))
    });
    let c = capture.clone();
    m.set_native_fn("set", move |key: &str, value: Dynamic| {
        check_key(key)?;
        let max = c.limits().max_kv_value_bytes;
        let json = to_json(&value, max, "kv::set", "kv value")?;
        c.kv_put(key, Some(json)).map_err(host_error)
    });
    let c = capture.clone();
    m.set_native_fn("delete", move |key: &str| {
        check_key(key)?;
        c.kv_put(key, None).map_err(host_error)
    });
    let c = capture.clone();
    m.set_native_fn("list", move |prefix: &str| {
        if prefix.len() > MAX_KV_KEY_BYTES {
            return Err(failed(format!(
                "kv::list: the prefix is longer than {MAX_KV_KEY_BYTES} bytes"
            )));
        }
        let keys = c.kv_list(prefix).map_err(host_error)?;
        Ok(keys.into_iter().map(Dynamic::from).collect::<Array>())
    });
    engine.register_static_module("kv", m.into());

    let c = capture.clone();
    engine.register_fn(
        "emit",
        move |topic: &str, payload: Dynamic| -> Result<(), Box<EvalAltResult>> {
            picloud_core::job::validate_topic(topic).map_err(|e| failed(format!("emit: {e}")))?;
            let max = c.limits().max_emit_bytes;
            let json = to_json(&payload, max, "emit", "event payload")?;
            c.emit(topic.to_owned(), json).map_err(host_error)
        },
    );
}

fn check_key(key: &str) -> Result<(), Box<EvalAltResult>> {
    if key.is_empty() {
        return Err(failed("kv: a key may not be empty"));
    }
    if key.len() > MAX_KV_KEY_BYTES {
        return Err(failed(format!(
            "kv: a key may be at most {MAX_KV_KEY_BYTES} bytes"
        )));
    }
    if key.contains('\0') {
        return Err(failed("kv: a key may not contain NUL"));
    }
    Ok(())
}

/// `value` as JSON, at most `max` bytes: a bigger one breaks the limit.
fn to_json(
    value: &Dynamic,
    max: usize,
    what: &str,
    limit_name: &str,
) -> Result<serde_json::Value, Box<EvalAltResult>> {
    let text = crate::host::to_json(value).map_err(|e| failed(format!("{what}: {e}")))?;
    if text.len() > max {
        return Err(limit(format!(
            "{limit_name} size limit of {max} bytes exceeded"
        )));
    }
    serde_json::from_str(&text).map_err(|e| failed(format!("{what}: {e}")))
}

fn host_error(e: HostError) -> Box<EvalAltResult> {
    match e {
        HostError::Failed(m) => failed(m),
        HostError::Limit(m) => limit(m),
    }
}

fn limit(message: String) -> Box<EvalAltResult> {
    EvalAltResult::ErrorTerminated(format!("{LIMIT_TOKEN}{message}").into(), Position::NONE).into()
}

fn failed(message: impl Into<String>) -> Box<EvalAltResult> {
    EvalAltResult::ErrorRuntime(message.into().into(), Position::NONE).into()
}
