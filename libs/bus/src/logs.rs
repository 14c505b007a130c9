//! Live logs: executors → `{P}_LOGS` (limits retention) → followers.
//!
//! Each message carries a batch of one script's [`LogEvent`]s (a JSON
//! array) on `{p}.logs.{script}`. The stream keeps at least the last 15
//! minutes and the last 10,000 messages of every script (so at least 10,000
//! lines), under a byte cap; nothing consumes it durably. A follower reads
//! it with an ordered consumer, so a position is a stream sequence plus an
//! index in that message's batch ([`LogCursor`]).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, stream};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use picloud_core::LogEvent;

use crate::{BusError, Names};

/// At least the 10 minutes a reconnecting follower may need.
const MAX_AGE: Duration = Duration::from_secs(15 * 60);
/// Messages kept per script: each holds one line or more.
const MAX_MSGS_PER_SCRIPT: i64 = 10_000;
/// Every script's logs together (the stream drops its oldest past this).
const MAX_BYTES: i64 = 256 << 20;
/// Messages one "recent lines" read may scan.
const MAX_RECENT_SCAN: u64 = 20_000;

pub(crate) async fn ensure_stream(
    js: &jetstream::Context,
    names: &Names,
    replicas: usize,
) -> Result<(), BusError> {
    js.get_or_create_stream(stream::Config {
        name: names.logs_stream(),
        subjects: vec![names.logs_wildcard()],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        max_age: MAX_AGE,
        max_messages_per_subject: MAX_MSGS_PER_SCRIPT,
        max_bytes: MAX_BYTES,
        discard: stream::DiscardPolicy::Old,
        num_replicas: replicas,
        ..Default::default()
    })
    .await
    .map_err(|e| BusError::js("logs stream")(e.into()))?;
    Ok(())
}

/// A position in a script's live log: after event `index` of the message
/// at stream sequence `seq`, or after that whole message (`index: None`).
/// Written `SEQ-INDEX` or `SEQ`: the SSE event id a follower resumes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogCursor {
    pub seq: u64,
    pub index: Option<u32>,
}

impl LogCursor {
    pub fn parse(s: &str) -> Option<Self> {
        let digits =
            |d: &str| !d.is_empty() && d.len() <= 19 && d.bytes().all(|b| b.is_ascii_digit());
        match s.split_once('-') {
            Some((seq, index)) if digits(seq) && digits(index) => Some(Self {
                seq: seq.parse().ok()?,
                index: Some(index.parse().ok()?),
            }),
            None if digits(s) => Some(Self {
                seq: s.parse().ok()?,
                index: None,
            }),
            _ => None,
        }
    }

    pub fn at(seq: u64, index: usize) -> Self {
        Self {
            seq,
            index: Some(u32::try_from(index).unwrap_or(u32::MAX)),
        }
    }

    /// Whether event `index` of message `seq` comes after this position.
    pub fn is_before(&self, seq: u64, index: usize) -> bool {
        match self.index {
            _ if seq != self.seq => seq > self.seq,
            Some(i) => index as u64 > u64::from(i),
            None => false,
        }
    }
}

impl std::fmt::Display for LogCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.index {
            Some(i) => write!(f, "{}-{i}", self.seq),
            None => write!(f, "{}", self.seq),
        }
    }
}

/// One message of a script's live log.
#[derive(Debug)]
pub struct LogBatch {
    pub seq: u64,
    pub events: Vec<LogEvent>,
    /// Messages of this script still after this one in the stream.
    pub pending: u64,
}

pub(crate) async fn publish(
    js: &jetstream::Context,
    names: &Names,
    script: &str,
    batch: Bytes,
) -> Result<(), BusError> {
    let ack = js
        .publish_with_headers(names.logs_subject(script), crate::wire::headers(), batch)
        .await
        .map_err(|e| BusError::js("logs publish")(e.into()))?;
    ack.await
        .map_err(|e| BusError::js("logs publish ack")(e.into()))?;
    Ok(())
}

fn batch_of(message: &jetstream::Message) -> Result<LogBatch, BusError> {
    let info = message
        .info()
        .map_err(|e| BusError::js("logs message info")(e))?;
    let (seq, pending) = (info.stream_sequence, info.pending);
    // A malformed message (not ours) is skipped, not fatal.
    let events = serde_json::from_slice(&message.payload).unwrap_or_else(|e| {
        tracing::warn!(error = %e, seq, "skipping a malformed live-log message");
        Vec::new()
    });
    Ok(LogBatch {
        seq,
        events,
        pending,
    })
}

/// An ordered consumer of `script`'s log from stream sequence `start` on
/// (`None`: only what is published from now), and how many of its messages
/// are already there.
async fn consumer(
    js: &jetstream::Context,
    names: &Names,
    script: &str,
    start: Option<u64>,
    name: &str,
) -> Result<(u64, jetstream::consumer::Consumer<pull::OrderedConfig>), BusError> {
    let stream = js
        .get_stream(names.logs_stream())
        .await
        .map_err(|e| BusError::js("logs stream")(e.into()))?;
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            name: Some(name.to_owned()),
            filter_subject: names.logs_subject(script),
            deliver_policy: match start {
                Some(start_sequence) => jetstream::consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: start_sequence.max(1),
                },
                None => jetstream::consumer::DeliverPolicy::New,
            },
            ..Default::default()
        })
        .await
        .map_err(|e| BusError::js("logs consumer")(e.into()))?;
    Ok((consumer.cached_info().num_pending, consumer))
}

/// Every message of `script`'s log after `after` (`None`: from now on),
/// for as long as the stream is polled.
pub(crate) async fn follow(
    js: &jetstream::Context,
    names: &Names,
    script: &str,
    after: Option<LogCursor>,
) -> Result<impl Stream<Item = Result<LogBatch, BusError>> + use<>, BusError> {
    // A cursor inside a message starts at that message (its earlier events
    // are skipped by the caller); after a whole message, at the next one.
    let start = after.map(|c| if c.index.is_some() { c.seq } else { c.seq + 1 });
    let name = consumer_name();
    let (_, consumer) = consumer(js, names, script, start, &name).await?;
    let messages = consumer
        .messages()
        .await
        .map_err(|e| BusError::js("logs messages")(e.into()))?;
    Ok(Follow {
        inner: Box::pin(messages.map(|m| {
            let m = m.map_err(|e| BusError::js("logs messages")(e.into()))?;
            batch_of(&m)
        })),
        cleanup: Some((js.clone(), names.logs_stream(), name)),
    })
}

/// A fresh ephemeral consumer name (the ordered consumer names its
/// replacements `{name}_{n}`).
fn consumer_name() -> String {
    format!("logs_{}", uuid::Uuid::new_v4().simple())
}

/// A follower's messages. Dropping it deletes its consumer at once rather
/// than after the server's inactivity timeout, so the stream's consumer
/// count is the number of live followers.
struct Follow {
    inner: Pin<Box<dyn Stream<Item = Result<LogBatch, BusError>> + Send>>,
    cleanup: Option<(jetstream::Context, String, String)>,
}

impl Stream for Follow {
    type Item = Result<LogBatch, BusError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl Drop for Follow {
    fn drop(&mut self) {
        let Some((js, stream, name)) = self.cleanup.take() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = js.delete_consumer_from_stream(&name, &stream).await;
            });
        }
    }
}

/// The stream sequence of `script`'s newest live-log message (0: none).
pub(crate) async fn last_seq(
    js: &jetstream::Context,
    names: &Names,
    script: &str,
) -> Result<u64, BusError> {
    let stream = js
        .get_stream(names.logs_stream())
        .await
        .map_err(|e| BusError::js("logs stream")(e.into()))?;
    match stream
        .get_last_raw_message_by_subject(&names.logs_subject(script))
        .await
    {
        Ok(m) => Ok(m.sequence),
        Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(0),
        Err(e) => Err(BusError::js("logs last message")(e.into())),
    }
}

/// The last `limit` events of `script`'s log (oldest first) with their
/// positions, and the position after the newest message in the stream (from
/// which a follower misses nothing that came after this read).
pub(crate) async fn recent(
    js: &jetstream::Context,
    names: &Names,
    script: &str,
    limit: usize,
) -> Result<(Vec<(LogCursor, LogEvent)>, LogCursor), BusError> {
    let mut stream = js
        .get_stream(names.logs_stream())
        .await
        .map_err(|e| BusError::js("logs stream")(e.into()))?;
    let state = stream
        .info()
        .await
        .map_err(|e| BusError::js("logs stream info")(e.into()))?
        .state
        .clone();
    let end = LogCursor {
        seq: state.last_sequence,
        index: None,
    };
    // The stream interleaves every script: look back over a window of
    // messages that doubles until it holds `limit` events of this script
    // or reaches the stream's start.
    let mut window = (limit as u64).max(64);
    loop {
        let start = state
            .last_sequence
            .saturating_sub(window - 1)
            .max(state.first_sequence)
            .max(1);
        let name = consumer_name();
        let (n, consumer) = consumer(js, names, script, Some(start), &name).await?;
        let mut out = std::collections::VecDeque::new();
        if n > 0 {
            let mut messages = consumer
                .messages()
                .await
                .map_err(|e| BusError::js("logs messages")(e.into()))?
                .take(n.min(MAX_RECENT_SCAN) as usize);
            while let Some(m) = messages.next().await {
                let m = m.map_err(|e| BusError::js("logs messages")(e.into()))?;
                let batch = batch_of(&m)?;
                for (i, e) in batch.events.into_iter().enumerate() {
                    out.push_back((LogCursor::at(batch.seq, i), e));
                    if out.len() > limit {
                        out.pop_front();
                    }
                }
                if batch.seq >= state.last_sequence || batch.pending == 0 {
                    break;
                }
            }
        }
        let _ = js
            .delete_consumer_from_stream(&name, names.logs_stream())
            .await;
        let whole = start <= state.first_sequence.max(1) || window >= MAX_RECENT_SCAN;
        if out.len() >= limit || whole {
            return Ok((out.into(), end));
        }
        window = window.saturating_mul(4).min(MAX_RECENT_SCAN);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_parse_and_order() {
        let c = LogCursor::parse("12-3").unwrap();
        assert_eq!(c, LogCursor::at(12, 3));
        assert_eq!(c.to_string(), "12-3");
        assert!(!c.is_before(12, 3) && c.is_before(12, 4) && c.is_before(13, 0));
        assert!(!c.is_before(11, 9));
        let whole = LogCursor::parse("12").unwrap();
        assert_eq!(whole.to_string(), "12");
        assert!(!whole.is_before(12, 99) && whole.is_before(13, 0));
        for bad in [
            "",
            "-",
            "1-",
            "-1",
            "a",
            "1-2-3",
            "1 ",
            "99999999999999999999",
            "+1",
        ] {
            assert_eq!(LogCursor::parse(bad), None, "{bad:?}");
        }
    }
}
