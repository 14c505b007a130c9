//! Publishing every invocation's log lines, and its end, to the live log.
//!
//! Off the hot path like the records (see [`crate::batch`]): a finished
//! invocation's events are queued in a bounded buffer and a task publishes
//! them, one message per script per batch, on the script's live-log subject.
//! A full buffer or an unreachable bus drops events (counted in the log);
//! scripts never wait for the live log, and the invocation record in
//! Postgres keeps the log whatever happens here.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use picloud_bus::Bus;
use picloud_core::{InvocationRecord, LogEvent};
use picloud_sandbox::{LogLine, log_lines};

use crate::batch::{Batcher, Closer};

/// Invocations queued for the publisher at most.
const CAPACITY: usize = 65_536;
/// One message's events, in bytes (well under NATS's 1 MB default).
const MAX_MESSAGE_BYTES: usize = 256 << 10;
/// Messages sent and not yet acknowledged by JetStream, at most.
const MAX_IN_FLIGHT: usize = 64;
/// A line longer than this is cut in the live log (the record keeps it).
const MAX_LINE_BYTES: usize = 32 << 10;

/// One invocation's events, for its script's subject.
struct Entry {
    script: String,
    events: Vec<LogEvent>,
}

#[derive(Clone)]
pub struct LiveLog {
    buffer: Arc<Closer<Entry>>,
}

impl LiveLog {
    pub fn start(bus: Bus) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let buffer = Arc::new(Batcher::new(CAPACITY, "live-log events"));
        let task = publish_loop(bus, buffer.clone());
        let live = Self {
            buffer: Arc::new(Closer(buffer)),
        };
        (live, task)
    }

    /// Queues the lines of the invocation `record` describes (`lines` marks
    /// them in its log) and its end.
    pub fn invocation(&self, record: &InvocationRecord, lines: &[LogLine]) {
        let mut events = Vec::with_capacity(lines.len() + 1);
        for (mark, text) in log_lines(&record.log, lines) {
            events.push(LogEvent::Line {
                invocation: record.id,
                attempt: record.attempt,
                at: DateTime::<Utc>::from_timestamp_micros(mark.at_us).unwrap_or(record.started_at),
                level: mark.level,
                line: cut(text),
            });
        }
        events.push(LogEvent::End {
            invocation: record.id,
            attempt: record.attempt,
            at: record.started_at
                + chrono::Duration::microseconds(
                    i64::try_from(record.duration_us).unwrap_or(i64::MAX / 2),
                ),
            status: record.status,
            http_status: record.http_status,
            duration_us: record.duration_us,
            error: record.error.as_deref().map(cut),
        });
        self.buffer.0.push(Entry {
            script: record.script.clone(),
            events,
        });
    }
}

fn cut(text: &str) -> String {
    if text.len() <= MAX_LINE_BYTES {
        return text.to_owned();
    }
    let mut at = MAX_LINE_BYTES;
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    format!("{} [truncated]", &text[..at])
}

async fn publish_loop(bus: Bus, buffer: Arc<Batcher<Entry>>) {
    let mut taken = Vec::new();
    // Each script's messages: closed JSON arrays, the last one being filled.
    let mut messages: HashMap<String, Vec<Vec<u8>>> = HashMap::new();
    let mut encoded = Vec::new();
    while buffer.next_batch(&mut taken).await {
        for entry in taken.drain(..) {
            let parts = messages.entry(entry.script).or_default();
            for event in &entry.events {
                encoded.clear();
                serde_json::to_writer(&mut encoded, event).expect("log events serialise");
                append(parts, &encoded);
            }
        }
        // Every message is sent before any ack is awaited (at most
        // MAX_IN_FLIGHT unacknowledged): one script's acks do not delay the
        // next script's lines.
        let mut acks = FuturesUnordered::new();
        for (script, parts) in messages.drain() {
            for mut part in parts {
                part.push(b']');
                match bus.publish_logs(&script, part.into()).await {
                    Ok(ack) => {
                        let script = script.clone();
                        acks.push(async move { ack.await.map_err(|e| (e, script)) });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, script, "cannot publish live-log events; dropped");
                    }
                }
                while acks.len() >= MAX_IN_FLIGHT {
                    settle(acks.next().await);
                }
            }
        }
        while let Some(ack) = acks.next().await {
            settle(Some(ack));
        }
    }
    let dropped = buffer.dropped();
    if dropped > 0 {
        tracing::warn!(
            dropped,
            "live-log invocations dropped while the buffer was full"
        );
    }
}

fn settle(ack: Option<Result<(), (picloud_bus::BusError, String)>>) {
    if let Some(Err((e, script))) = ack {
        tracing::warn!(error = %e, script, "live-log events not stored; dropped");
    }
}

/// Adds one encoded event to `parts` (open JSON arrays of at most
/// [`MAX_MESSAGE_BYTES`]; one event alone may exceed it).
fn append(parts: &mut Vec<Vec<u8>>, event: &[u8]) {
    match parts.last_mut() {
        Some(part) if part.len() + event.len() + 2 <= MAX_MESSAGE_BYTES => {
            part.push(b',');
            part.extend_from_slice(event);
        }
        _ => {
            let mut part = Vec::with_capacity(event.len() + 2);
            part.push(b'[');
            part.extend_from_slice(event);
            parts.push(part);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_batches_split_at_event_boundaries() {
        let event = format!("{{\"line\":\"{}\"}}", "x".repeat(100 << 10));
        let mut parts = Vec::new();
        for _ in 0..5 {
            append(&mut parts, event.as_bytes());
        }
        assert!(parts.len() >= 2, "{}", parts.len());
        let mut n = 0;
        for mut p in parts {
            p.push(b']');
            assert!(p.len() <= MAX_MESSAGE_BYTES);
            n += serde_json::from_slice::<Vec<serde_json::Value>>(&p)
                .unwrap()
                .len();
        }
        assert_eq!(n, 5);
    }
}
