//! `picloud logs NAME [-f]`: a script's recent log lines, or its live log
//! followed over Server-Sent Events, reconnecting from the last event id so
//! no line is lost or shown twice (a dropped connection, a restart of the
//! server, or the server cutting off a reader that fell behind).

use std::time::Duration;

use clap::Args;
use reqwest::Method;
use serde_json::Value;

use super::client::{CliError, Client, api_error, seg};
use super::output::{Out, escape_controls, outln};

#[derive(Args)]
pub struct LogsArgs {
    /// The script's name.
    pub name: String,
    /// Keep printing lines as invocations write them (Ctrl-C to stop).
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Recent lines to print first (events: lines and invocation ends).
    #[arg(long, short = 'n', default_value_t = 100, value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub limit: u32,
}

pub async fn logs(client: &Client, out: Out, args: LogsArgs) -> Result<(), CliError> {
    let path = format!(
        "/scripts/{}/logs?limit={}",
        seg(&args.name),
        args.limit.max(1)
    );
    let recent = client.get(&path).await?;
    if !args.follow {
        if out.json {
            out.json(&recent);
        } else {
            for e in events(&recent) {
                print_event(out, e);
            }
        }
        return Ok(());
    }
    if args.limit > 0 {
        for e in events(&recent) {
            print_event(out, e);
        }
    }
    let cursor = recent
        .get("cursor")
        .and_then(Value::as_str)
        .map(str::to_owned);
    follow(client, out, &args.name, cursor).await
}

fn events(v: &Value) -> &[Value] {
    v.get("events")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// Follows the stream from `cursor` for ever, reconnecting with the last
/// event id seen (at once after the server cut this reader off, with a
/// growing pause after a failure).
async fn follow(
    client: &Client,
    out: Out,
    name: &str,
    mut cursor: Option<String>,
) -> Result<(), CliError> {
    let path = format!("/api/v1/scripts/{}/logs?follow=true", seg(name));
    let mut pause = picloud_core::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let mut req = client.authed(Method::GET, &path);
        if let Some(c) = &cursor {
            req = req.header("last-event-id", c.as_str());
        }
        let why = match req.send().await {
            Ok(resp) if resp.status().is_success() => {
                match read_stream(resp, out, &mut cursor).await {
                    Ended::Overflow(message) => {
                        eprintln!("note: {message}; resuming");
                        pause.reset();
                        continue;
                    }
                    Ended::Closed(why) => why,
                }
            }
            Ok(resp) => {
                let status = resp.status();
                let body = resp.text().await.unwrap_or_default();
                // The script is gone, the token refused, …: not worth retrying.
                if status.is_client_error() {
                    return Err(api_error(status, &body));
                }
                format!("the server answered {status}")
            }
            Err(e) => client.unreachable(e).to_string(),
        };
        let first = why.lines().next().unwrap_or_default();
        eprintln!("note: the live log was interrupted ({first}); reconnecting");
        tokio::time::sleep(pause.next_pause()).await;
    }
}

enum Ended {
    /// The server cut this reader off (it fell behind): resume at once.
    Overflow(String),
    /// The connection ended or failed.
    Closed(String),
}

/// Prints every event of one connection, keeping `cursor` at the last id.
async fn read_stream(mut resp: reqwest::Response, out: Out, cursor: &mut Option<String>) -> Ended {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let chunk = match resp.chunk().await {
            Ok(Some(c)) => c,
            Ok(None) => return Ended::Closed("the server closed the stream".into()),
            Err(e) => return Ended::Closed(e.without_url().to_string()),
        };
        buf.extend_from_slice(&chunk);
        while let Some(block) = next_block(&mut buf) {
            let Some((kind, id, data)) = parse_block(block) else {
                continue;
            };
            let value: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
            match kind.as_str() {
                "overflow" | "error" => {
                    let message = value
                        .get("message")
                        .and_then(Value::as_str)
                        .unwrap_or("the server ended the stream");
                    let message = escape_controls(message, false);
                    return if kind == "overflow" {
                        Ended::Overflow(message)
                    } else {
                        Ended::Closed(message)
                    };
                }
                _ => {
                    print_event(out, &value);
                    if let Some(id) = id {
                        *cursor = Some(id);
                    }
                }
            }
        }
    }
}

/// Takes the first complete event block (up to a blank line) off `buf`.
/// (`\r` is dropped: in a JSON event it only ever ends a line.)
fn next_block(buf: &mut Vec<u8>) -> Option<String> {
    buf.retain(|&b| b != b'\r');
    let end = buf.windows(2).position(|w| w == b"\n\n")?;
    let block = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.drain(..end + 2);
    Some(block)
}

/// An event block's (event type, id, data); `None` for a comment only.
fn parse_block(block: String) -> Option<(String, Option<String>, String)> {
    let (mut kind, mut id, mut data) = ("message".to_owned(), None, Vec::new());
    for line in block.lines() {
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => kind = value.to_owned(),
            "id" => id = Some(value.to_owned()),
            "data" => data.push(value),
            _ => {}
        }
    }
    (!data.is_empty()).then(|| (kind, id, data.join("\n")))
}

/// `time level [invocation] line` (or the end of an invocation), or the
/// event's JSON on one line with `--json`.
fn print_event(out: Out, e: &Value) {
    if out.json {
        outln!("{e}");
        return;
    }
    let s = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("");
    let invocation = s("invocation");
    // The random end of the id (a v7 id starts with its time).
    let short = &invocation[invocation.len().saturating_sub(8)..];
    match s("type") {
        "line" => outln!(
            "{} {:<5} [{short}] {}",
            s("at"),
            s("level"),
            escape_controls(s("line"), false)
        ),
        "end" => {
            let ms = e.get("duration_us").and_then(Value::as_u64).unwrap_or(0) as f64 / 1000.0;
            let status = s("status");
            let mut text = format!("{} {:<5} [{short}] {status} in {ms:.1} ms", s("at"), "end");
            if let Some(h) = e.get("http_status").and_then(Value::as_u64) {
                text.push_str(&format!(", HTTP {h}"));
            }
            if let Some(err) = e.get("error").and_then(Value::as_str) {
                text.push_str(&format!(": {}", escape_controls(err, false)));
            }
            outln!("{}", out.paint(&text, status == "ok"));
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_blocks_parse() {
        let mut buf = b"id: 5-0\nevent: line\ndata: {\"a\":1}\n\n: keepalive\n\nid: 6".to_vec();
        let block = next_block(&mut buf).unwrap();
        assert_eq!(
            parse_block(block),
            Some(("line".into(), Some("5-0".into()), "{\"a\":1}".into()))
        );
        let block = next_block(&mut buf).unwrap();
        assert_eq!(parse_block(block), None);
        assert_eq!(buf, b"id: 6");
        assert!(next_block(&mut buf).is_none());
        let block = next_block(&mut b"data: x\r\ndata: y\r\n\r\n".to_vec()).unwrap();
        assert_eq!(
            parse_block(block),
            Some(("message".into(), None, "x\ny".into()))
        );
    }
}
