//! `http::*` for scripts: the Rhai side of outbound HTTP.
//!
//! The sandbox only turns Rhai values into an [`HttpCall`] and an
//! [`HttpReply`] back into a map; the embedding process's [`crate::Host`]
//! sends it (the executor: through the SSRF-checked egress client). The
//! sandbox counts calls against `max_http_calls`.
//!
//! - `http::get(url[, opts])`, `http::delete(..)`, `http::head(..)`
//! - `http::post(url, body[, opts])`, `http::put(..)`, `http::patch(..)`
//! - `http::request(method, url, body, opts)`
//!
//! `body`: a string (sent as is), a map or array (sent as JSON), or `()`.
//! `opts`: `#{ headers: #{..}, query: #{..}, timeout: <ms> }`. The result:
//! `#{ status, headers, body, json, truncated }`. A non-2xx status is a
//! result; a denied or failed call is an error the script can catch;
//! exceeding a limit ends the invocation.

use std::sync::Arc;
use std::time::Duration;

use rhai::{Dynamic, Engine, EvalAltResult, Map, Module, Position};

use crate::capture::Capture;
use crate::hostcall::{HostError, HttpBody, HttpCall, HttpReply, LIMIT_TOKEN};

pub(crate) fn register(engine: &mut Engine, capture: &Arc<Capture>) {
    let mut m = Module::new();
    for verb in ["get", "delete", "head"] {
        let c = capture.clone();
        m.set_native_fn(verb, move |url: &str| {
            call(&c, verb, url, Dynamic::UNIT, None)
        });
        let c = capture.clone();
        m.set_native_fn(verb, move |url: &str, opts: Map| {
            call(&c, verb, url, Dynamic::UNIT, Some(opts))
        });
    }
    for verb in ["post", "put", "patch"] {
        let c = capture.clone();
        m.set_native_fn(verb, move |url: &str, body: Dynamic| {
            call(&c, verb, url, body, None)
        });
        let c = capture.clone();
        m.set_native_fn(verb, move |url: &str, body: Dynamic, opts: Map| {
            call(&c, verb, url, body, Some(opts))
        });
    }
    let c = capture.clone();
    m.set_native_fn(
        "request",
        move |method: &str, url: &str, body: Dynamic, opts: Map| {
            call(&c, method, url, body, Some(opts))
        },
    );
    engine.register_static_module("http", m.into());
}

fn call(
    capture: &Capture,
    method: &str,
    url: &str,
    body: Dynamic,
    opts: Option<Map>,
) -> Result<Map, Box<EvalAltResult>> {
    let mut req = HttpCall {
        method: method.to_ascii_uppercase(),
        url: url.to_owned(),
        headers: Vec::new(),
        query: Vec::new(),
        body: body_of(body)?,
        timeout: None,
    };
    if let Some(opts) = opts {
        for (key, value) in opts {
            match key.as_str() {
                "headers" => req.headers = pairs(value, "headers")?,
                "query" => req.query = pairs(value, "query")?,
                "timeout" => {
                    let ms = value.as_int().ok().filter(|ms| *ms > 0).ok_or_else(|| {
                        failed("http: opts.timeout must be a positive number of milliseconds")
                    })?;
                    req.timeout = Some(Duration::from_millis(ms as u64));
                }
                other => {
                    return Err(failed(format!(
                        "http: unknown option {} (use headers, query, timeout)",
                        picloud_core::quote(other)
                    )));
                }
            }
        }
    }
    match capture.http(req) {
        Ok(reply) => Ok(reply_map(reply)),
        Err(HostError::Failed(message)) => Err(failed(message)),
        Err(HostError::Limit(message)) => Err(EvalAltResult::ErrorTerminated(
            format!("{LIMIT_TOKEN}{message}").into(),
            Position::NONE,
        )
        .into()),
    }
}

fn body_of(body: Dynamic) -> Result<Option<HttpBody>, Box<EvalAltResult>> {
    if body.is_unit() {
        return Ok(None);
    }
    if body.is_string() {
        return Ok(Some(HttpBody::Text(body.into_string().unwrap_or_default())));
    }
    if body.is_map() || body.is_array() {
        if crate::host::depth_exceeds(&body, crate::host::MAX_JSON_DEPTH) {
            return Err(failed(
                "http: the body is nested too deeply to send as JSON",
            ));
        }
        let json = serde_json::to_value(&body)
            .map_err(|e| failed(format!("http: the body cannot be sent as JSON: {e}")))?;
        return Ok(Some(HttpBody::Json(json)));
    }
    Ok(Some(HttpBody::Text(body.to_string())))
}

fn pairs(value: Dynamic, what: &str) -> Result<Vec<(String, String)>, Box<EvalAltResult>> {
    let map = value
        .try_cast::<Map>()
        .ok_or_else(|| failed(format!("http: opts.{what} must be a map")))?;
    Ok(map
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

fn reply_map(reply: HttpReply) -> Map {
    let mut headers = Map::new();
    for (name, value) in reply.headers {
        match headers.get_mut(name.as_str()) {
            Some(existing) => {
                let joined = format!("{existing}, {value}");
                *existing = joined.into();
            }
            None => {
                headers.insert(name.into(), value.into());
            }
        }
    }
    let text = String::from_utf8_lossy(&reply.body).into_owned();
    let json = if reply.truncated || text.trim().is_empty() {
        Dynamic::UNIT
    } else {
        serde_json::from_str::<serde_json::Value>(&text)
            .map_or(Dynamic::UNIT, |v| crate::json_to_dynamic(&v))
    };
    let mut out = Map::new();
    out.insert("status".into(), (reply.status as rhai::INT).into());
    out.insert("headers".into(), headers.into());
    out.insert("body".into(), text.into());
    out.insert("json".into(), json);
    out.insert("truncated".into(), reply.truncated.into());
    out
}

fn failed(message: impl Into<String>) -> Box<EvalAltResult> {
    EvalAltResult::ErrorRuntime(message.into().into(), Position::NONE).into()
}
