//! Live logs: executors → `{P}_LOGS` (limits retention) → followers.
//!
//! Each message carries a batch of one script's [`LogEvent`]s (a JSON
//! array) on `{p}.logs.{script}`. The stream keeps at least the last 15
//! minutes and the last 10,000 messages of every script (so at least 10,000
//! lines), under a byte cap; nothing consumes it durably. A follower reads
//! it with an ordered consumer, so a position is a stream sequence plus an
//! index in that message's batch ([`LogCursor`]).

use std::ops::Range;
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
    crate::stream_made(
        js,
        stream::Config {
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
        },
    )
    .await
    .map_err(BusError::js("logs stream"))?;
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

/// One message of a script's live log. Its events are kept as the executor
/// wrote them (each a JSON object in the API's form, without its id) and
/// only split and typed here, not decoded: a follower passes each on as it
/// is, so no identifier or timestamp is parsed and formatted again per line.
#[derive(Debug)]
pub struct LogBatch {
    pub seq: u64,
    /// Messages of this script still after this one in the stream.
    pub pending: u64,
    payload: Bytes,
    /// Each event's bytes in `payload`, and whether it is a line.
    events: Vec<(Range<usize>, bool)>,
}

impl LogBatch {
    /// A batch of `payload`'s events (a JSON array of [`LogEvent`]s); an
    /// error when it is not one.
    pub fn parse(seq: u64, pending: u64, payload: Bytes) -> Result<Self, serde_json::Error> {
        // One pass checks that it is JSON (nothing is built), one splits it.
        serde_json::from_slice::<serde::de::IgnoredAny>(&payload)?;
        let events = split_array(&payload)
            .ok_or_else(|| serde::de::Error::custom("a live-log message is a JSON array"))?
            .into_iter()
            .map(|range| {
                // (JSON, so UTF-8.)
                let text = std::str::from_utf8(&payload[range.clone()])
                    .map_err(serde::de::Error::custom)?;
                Ok((range, is_line(text)?))
            })
            .collect::<Result<_, serde_json::Error>>()?;
        Ok(Self {
            seq,
            pending,
            payload,
            events,
        })
    }

    fn empty(seq: u64, pending: u64) -> Self {
        Self {
            seq,
            pending,
            payload: Bytes::new(),
            events: Vec::new(),
        }
    }

    /// Its number of events.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Event `i`'s JSON object (`{"type":…}`), and whether it is a line
    /// (else an invocation's end).
    pub fn raw(&self, i: usize) -> (&[u8], bool) {
        let (range, line) = &self.events[i];
        (&self.payload[range.clone()], *line)
    }

    /// How many of the events from `from` on are lines.
    pub fn lines_from(&self, from: usize) -> u64 {
        self.events
            .get(from..)
            .map_or(0, |e| e.iter().filter(|(_, line)| *line).count() as u64)
    }

    /// Event `i`, decoded.
    pub fn event(&self, i: usize) -> Result<LogEvent, serde_json::Error> {
        serde_json::from_slice(self.raw(i).0)
    }
}

/// The byte ranges of the elements of `json`, a valid JSON document, when
/// it is an array (`None` otherwise).
fn split_array(json: &[u8]) -> Option<Vec<Range<usize>>> {
    let ws = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
    let open = json.iter().position(|b| !ws(b))?;
    if json[open] != b'[' {
        return None;
    }
    let mut out = Vec::new();
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    let mut start = None;
    let mut last = 0;
    for (i, &b) in json.iter().enumerate().skip(open + 1) {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            last = i;
            continue;
        }
        match b {
            _ if ws(&b) => continue,
            b',' | b']' if depth == 0 => {
                if let Some(s) = start.take() {
                    out.push(s..last + 1);
                }
                if b == b']' {
                    return Some(out);
                }
                continue;
            }
            b'[' | b'{' => depth += 1,
            b']' | b'}' => depth -= 1,
            b'"' => in_string = true,
            _ => {}
        }
        start.get_or_insert(i);
        last = i;
    }
    None
}

/// Whether an event (a JSON object) is a line or an end: read from its
/// first field as executors write it, else by parsing its `type`.
fn is_line(event: &str) -> Result<bool, serde_json::Error> {
    if event.starts_with(r#"{"type":"line","#) {
        return Ok(true);
    }
    if event.starts_with(r#"{"type":"end","#) {
        return Ok(false);
    }
    if !event.starts_with('{') {
        return Err(serde::de::Error::custom(
            "a live-log event is a JSON object",
        ));
    }
    #[derive(serde::Deserialize)]
    struct Kind<'a> {
        #[serde(rename = "type", borrow)]
        kind: std::borrow::Cow<'a, str>,
    }
    match serde_json::from_str::<Kind<'_>>(event)?.kind.as_ref() {
        "line" => Ok(true),
        "end" => Ok(false),
        other => Err(serde::de::Error::custom(format!(
            "unknown live-log event type {}",
            picloud_core::quote(other)
        ))),
    }
}

/// Sends a batch; the future it returns resolves with JetStream's ack (so a
/// publisher can send many before waiting for any).
pub(crate) async fn publish(
    js: &jetstream::Context,
    names: &Names,
    script: &str,
    batch: Bytes,
) -> Result<impl Future<Output = Result<(), BusError>> + Send + use<>, BusError> {
    let ack = js
        .publish_with_headers(names.logs_subject(script), crate::wire::headers(), batch)
        .await
        .map_err(|e| BusError::js("logs publish")(e.into()))?;
    Ok(async move {
        ack.await
            .map_err(|e| BusError::js("logs publish ack")(e.into()))?;
        Ok(())
    })
}

fn batch_of(message: &jetstream::Message) -> Result<LogBatch, BusError> {
    let info = message
        .info()
        .map_err(|e| BusError::js("logs message info")(e))?;
    let (seq, pending) = (info.stream_sequence, info.pending);
    // A malformed message (not ours) or one of a newer wire version is
    // skipped (logged): its position counts, its events are not read.
    if crate::wire::check(&message.subject, message.headers.as_ref()).is_err() {
        return Ok(LogBatch::empty(seq, pending));
    }
    Ok(
        LogBatch::parse(seq, pending, message.payload.clone()).unwrap_or_else(|e| {
            tracing::warn!(error = %e, seq, "skipping a malformed live-log message");
            LogBatch::empty(seq, pending)
        }),
    )
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
                for i in 0..batch.len() {
                    match batch.event(i) {
                        Ok(e) => out.push_back((LogCursor::at(batch.seq, i), e)),
                        Err(e) => {
                            tracing::warn!(error = %e, seq = batch.seq, "skipping a malformed live-log event");
                        }
                    }
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
    fn batches_split_into_events_without_decoding_them() {
        let line = r#"{"type":"line","invocation":"00000000-0000-0000-0000-000000000000","attempt":1,"at":"2026-12-02T10:00:00Z","level":"info","line":"a, \"b\" ]} \\"}"#;
        let end = r#"{"type":"end","invocation":"00000000-0000-0000-0000-000000000000","attempt":1,"at":"2026-12-02T10:00:00Z","status":"ok","duration_us":5}"#;
        // Another writer's field order, and spaces between elements.
        let other = r#"{"level":"debug","type":"line","x":[1,{"y":"]"}]}"#;
        let payload = format!("[ {line} ,{end},\n{other}]");
        let batch = LogBatch::parse(7, 0, Bytes::from(payload)).unwrap();
        assert_eq!(batch.len(), 3);
        assert_eq!(batch.raw(0), (line.as_bytes(), true));
        assert_eq!(batch.raw(1), (end.as_bytes(), false));
        assert_eq!(batch.raw(2), (other.as_bytes(), true));
        assert_eq!(
            (
                batch.lines_from(0),
                batch.lines_from(1),
                batch.lines_from(3)
            ),
            (2, 1, 0)
        );
        match batch.event(0).unwrap() {
            LogEvent::Line { line, .. } => assert_eq!(line, r#"a, "b" ]} \"#),
            other => panic!("{other:?}"),
        }
        assert!(!batch.event(1).unwrap().is_line());
        assert!(
            LogBatch::parse(1, 0, Bytes::from_static(b"[]"))
                .unwrap()
                .is_empty()
        );
        for bad in [
            &b"{}"[..],
            b"[1,",
            b"[1]",
            b"[{}]",
            br#"[{"type":"start"}]"#,
            br#"[["line"]]"#,
            b"not json",
        ] {
            assert!(
                LogBatch::parse(1, 0, Bytes::from_static(bad)).is_err(),
                "{bad:?}"
            );
        }
    }

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
