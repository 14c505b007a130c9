//! From a script's value to an HTTP-shaped [`ScriptResponse`].
//!
//! | value                              | status | content type                |
//! |------------------------------------|--------|-----------------------------|
//! | string                             | 200    | `text/plain; charset=utf-8` |
//! | map or array                       | 200    | `application/json`          |
//! | integer, float, boolean            | 200    | `application/json`          |
//! | `()`                               | 204    | none                        |
//! | `response(status, body[, headers])`| given  | from `body` unless a `content-type` header is given |
//!
//! Anything else (a function pointer, a timestamp, …) is a script error that
//! says which type was returned.

use picloud_core::{Limits, ScriptResponse};
use rhai::{Dynamic, Engine, Map};

use crate::Failure;

pub const TEXT: &str = "text/plain; charset=utf-8";
pub const JSON: &str = "application/json";

/// The value of `response(...)` inside a script.
#[derive(Debug, Clone)]
pub struct ResponseValue {
    status: rhai::INT,
    body: Dynamic,
    headers: Map,
}

pub(crate) fn register(engine: &mut Engine) {
    engine.register_type_with_name::<ResponseValue>("Response");
    engine.register_fn("response", |status: rhai::INT, body: Dynamic| {
        response_value(status, body, Map::new())
    });
    engine.register_fn("response", response_value);
}

/// A body may hold data only: a `Response` inside a `Response` (or inside
/// an array inside one) would nest values past Rhai's size checks, and
/// dropping them recurses.
fn response_value(
    status: rhai::INT,
    body: Dynamic,
    headers: Map,
) -> Result<ResponseValue, Box<rhai::EvalAltResult>> {
    if holds_non_data(&body, 0) {
        return Err(rhai::EvalAltResult::ErrorRuntime(
            "response: the body must be a string, a number, a map, an array or ()".into(),
            rhai::Position::NONE,
        )
        .into());
    }
    Ok(ResponseValue {
        status,
        body,
        headers,
    })
}

fn holds_non_data(v: &Dynamic, depth: usize) -> bool {
    if depth > crate::host::MAX_JSON_DEPTH {
        return true;
    }
    if let Ok(arr) = v.as_array_ref() {
        return arr.iter().any(|x| holds_non_data(x, depth + 1));
    }
    if let Ok(map) = v.as_map_ref() {
        return map.values().any(|x| holds_non_data(x, depth + 1));
    }
    !(v.is_unit() || v.is_string() || v.is_int() || v.is_float() || v.is_bool() || v.is_char())
}

pub(crate) fn from_value(value: Dynamic, limits: &Limits) -> Result<ScriptResponse, Failure> {
    let resp = if value.is::<ResponseValue>() {
        let r = value.cast::<ResponseValue>();
        let status = u16::try_from(r.status)
            .ok()
            .filter(|s| (200..=599).contains(s))
            .ok_or_else(|| {
                Failure::script(format!(
                    "response status {} is not between 200 and 599",
                    r.status
                ))
            })?;
        let (mut content_type, body) = body(r.body)?;
        let mut headers = Vec::with_capacity(r.headers.len() + 1);
        for (name, v) in r.headers {
            let name = name.to_ascii_lowercase();
            if !valid_header_name(&name) {
                return Err(Failure::script(format!(
                    "invalid response header name {}",
                    picloud_core::quote(&name)
                )));
            }
            if reserved_header(&name) {
                return Err(Failure::script(format!(
                    "response header {} cannot be set by a script",
                    picloud_core::quote(&name)
                )));
            }
            let v = v.to_string();
            // RFC 9110 field values: no control characters but tab (a line
            // break would split the response; the others would make the
            // gateway drop the header).
            if let Some(b) = v.bytes().find(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
                let what = if b == b'\r' || b == b'\n' {
                    "a line break"
                } else {
                    "a control character"
                };
                return Err(Failure::script(format!(
                    "response header {} contains {what} (byte 0x{b:02x}); only tab and visible characters are allowed",
                    picloud_core::quote(&name)
                )));
            }
            if name == "content-type" {
                content_type = None;
            }
            headers.push((name, v));
        }
        if let Some(ct) = content_type {
            headers.push(("content-type".into(), ct.into()));
        }
        let body = if status == 204 || status == 304 {
            String::new()
        } else {
            body
        };
        ScriptResponse {
            status,
            headers,
            body,
        }
    } else {
        let (content_type, body) = body(value)?;
        match content_type {
            None => ScriptResponse {
                status: 204,
                headers: vec![],
                body,
            },
            Some(ct) => ScriptResponse {
                status: 200,
                headers: vec![("content-type".into(), ct.into())],
                body,
            },
        }
    };
    if resp.body.len() > limits.max_response_bytes {
        return Err(Failure::limit(
            format!(
                "response size limit of {} bytes exceeded",
                limits.max_response_bytes
            ),
            format!(
                "response body of {} bytes exceeds the limit of {} bytes",
                resp.body.len(),
                limits.max_response_bytes
            ),
        ));
    }
    Ok(resp)
}

/// A body value → (content type, text). `()` has no content type.
fn body(value: Dynamic) -> Result<(Option<&'static str>, String), Failure> {
    if value.is_unit() {
        return Ok((None, String::new()));
    }
    if value.is_string() {
        return Ok((Some(TEXT), value.into_string().unwrap_or_default()));
    }
    if value.is_map() || value.is_array() || value.is_int() || value.is_float() || value.is_bool() {
        return crate::host::to_json(&value)
            .map(|s| (Some(JSON), s))
            .map_err(|e| Failure::script(format!("result cannot be returned as JSON: {e}")));
    }
    if value.is_char() {
        return Ok((Some(TEXT), value.to_string()));
    }
    Err(Failure::script(format!(
        "a script cannot return a value of type {}",
        value.type_name()
    )))
}

/// Framing and hop-by-hop headers belong to the server: a script setting
/// `content-length` could split the response and forge a second one on a
/// kept-alive connection.
fn reserved_header(name: &str) -> bool {
    matches!(
        name,
        "content-length"
            | "transfer-encoding"
            | "connection"
            | "keep-alive"
            | "upgrade"
            | "te"
            | "trailer"
            | "x-picloud-invocation-id"
    ) || name.starts_with("proxy-")
}

fn valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}
