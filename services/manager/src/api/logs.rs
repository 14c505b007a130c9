//! Live logs: a script's recent lines (JSON) or its live stream
//! (Server-Sent Events), and one invocation's lines from its record.
//!
//! A follower gets its own ordered consumer on the script's live-log
//! subject and a bounded channel between that consumer and the response
//! body. A follower that cannot keep up fills the channel: once it has
//! stayed full for [`SLOW_READER_GRACE`] the follower is cut off with a
//! final `overflow` event saying how many lines it missed (it can resume
//! from its last id). Nothing a follower does reaches the executors, so no
//! reader ever slows a script. Keepalive comments run only while a follower
//! is connected; shutdown ends every follower's stream.

use std::convert::Infallible;
use std::time::Duration;

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use picloud_bus::{BusError, LogBatch, LogCursor};
use picloud_core::{LogEvent, ScriptName};
use picloud_http::{ApiError, ErrorBody, ErrorCode, JsonPath, JsonQuery};
use serde::Deserialize;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use utoipa::IntoParams;

use super::{Shared, internal, script_name};

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1_000;
/// How long an overflowing follower's missed events are counted before it
/// is cut off (the count is of what the stream held by then).
const COUNT_MISSED_FOR: Duration = Duration::from_secs(1);
/// How long a full follower buffer may stay full before its reader is cut
/// off (a burst larger than the buffer is not yet a slow reader).
const SLOW_READER_GRACE: Duration = Duration::from_secs(1);

/// How followers are served (from the configuration).
#[derive(Debug, Clone)]
pub struct FollowSettings {
    /// Events queued for one follower before it is cut off.
    pub buffer: usize,
    pub keepalive: Duration,
    /// Ends every follower's stream, so a graceful shutdown is not held
    /// open by streams that never end on their own.
    pub shutdown: picloud_core::Shutdown,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// `true`: a Server-Sent Events stream of every line as it is logged
    /// (resume with `Last-Event-ID`); else the recent lines as JSON.
    #[param(value_type = Option<bool>)]
    follow: Option<String>,
    /// Recent lines shown without `follow` (default 100).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
}

/// `GET /scripts/{name}/logs[?follow=true][&limit=N]`.
#[utoipa::path(get, path = "/api/v1/scripts/{name}/logs", tag = "logs",
    params(super::openapi::NameParam, LogsQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "resume after this event (an id this endpoint sent)")),
    responses(
        (status = 200, description = "without `follow`: `{\"events\": [...], \"cursor\"}`; with it, `text/event-stream` of `log`, `outcome` and a final `overflow` event", body = Object),
        (status = 400, description = "bad query or Last-Event-ID", body = ErrorBody),
        (status = 401, description = "no or wrong admin token", body = ErrorBody),
        (status = 404, description = "no such script", body = ErrorBody),
        (status = 500, description = "server fault", body = ErrorBody),
        (status = 503, description = "the live-log stream is unavailable", body = ErrorBody),
    ))]
pub async fn script_logs(
    State(state): State<Shared>,
    JsonPath(name): JsonPath<String>,
    JsonQuery(q): JsonQuery<LogsQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let name = script_name(&name)?;
    let follow = match q.follow.as_deref() {
        None | Some("false" | "0") => false,
        Some("true" | "1" | "") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "invalid follow {}: use true or false",
                picloud_core::quote(other)
            )));
        }
    };
    let after = match headers.get("last-event-id") {
        None => None,
        Some(v) => Some(v.to_str().ok().and_then(LogCursor::parse).ok_or_else(|| {
            ApiError::bad_request(
                "invalid Last-Event-ID: use an id this endpoint sent (SEQ or SEQ-INDEX)",
            )
            .with_code(ErrorCode::InvalidLastEventId)
        })?),
    };
    let limit = match q.limit.as_deref() {
        None => DEFAULT_LIMIT,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=MAX_LIMIT).contains(l))
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "invalid limit {}: use 1 to {MAX_LIMIT}",
                    picloud_core::quote(l)
                ))
            })?,
    };
    if state
        .store
        .get_script(name.as_str())
        .await
        .map_err(internal)?
        .is_none()
    {
        return Err(ApiError::not_found(format!(
            "no script named {}",
            picloud_core::quote(name.as_str())
        )));
    }
    if follow {
        return follow_logs(&state, &name, after).await;
    }
    let (events, end) = state
        .bus
        .recent_logs(name.as_str(), limit)
        .await
        .map_err(bus_unavailable)?;
    let cursor = events.last().map_or(end, |(c, _)| *c);
    let events: Vec<Shown> = events.iter().map(|(c, e)| with_id(*c, e)).collect();
    Ok(Json(json!({ "events": events, "cursor": cursor.to_string() })).into_response())
}

fn bus_unavailable(e: BusError) -> ApiError {
    tracing::warn!(error = %e, "live logs unavailable");
    ApiError::unavailable("the live log is unavailable (message bus); retry")
}

/// An event as the API shows it: its `id` and its own fields (serialised
/// straight from the event: a follower does this for every line, so no
/// intermediate JSON value is built).
#[derive(Serialize)]
struct Shown<'a> {
    id: String,
    #[serde(flatten)]
    event: &'a LogEvent,
}

fn with_id(cursor: LogCursor, event: &LogEvent) -> Shown<'_> {
    Shown {
        id: cursor.to_string(),
        event,
    }
}

async fn follow_logs(
    state: &Shared,
    name: &ScriptName,
    after: Option<LogCursor>,
) -> Result<Response, ApiError> {
    let settings = &state.follow;
    let batches = state
        .bus
        .follow_logs(name.as_str(), after)
        .await
        .map_err(bus_unavailable)?;
    // (tokio refuses 0 and absurd capacities.)
    let room = settings.buffer.clamp(1, 1 << 20);
    let (tx, rx) = mpsc::channel(room);
    let (last_tx, last_rx) = oneshot::channel();
    tokio::spawn(pump(
        Follower {
            bus: state.bus.clone(),
            script: name.as_str().to_owned(),
            after,
            shutdown: settings.shutdown.clone(),
            room: Arc::new(Semaphore::new(room)),
        },
        Box::pin(batches),
        tx,
        last_tx,
    ));
    let body = Body::from_stream(sse_body(rx, last_rx, settings.keepalive));
    let mut resp = body.into_response();
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Proxies that buffer (nginx) would hold events back.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(resp)
}

/// The text of one or more Server-Sent Events, and the room its events take
/// in the follower's buffer (given back once the response body takes it).
struct Chunk {
    text: Bytes,
    _room: Option<OwnedSemaphorePermit>,
}

/// A follower's response body: the pump's chunks as they come, a keepalive
/// comment after `keepalive` without one, and the final event (if any)
/// once the pump ends.
fn sse_body(
    rx: mpsc::Receiver<Chunk>,
    last: oneshot::Receiver<Bytes>,
    keepalive: Duration,
) -> impl Stream<Item = Result<Bytes, Infallible>> + Send + 'static {
    futures::stream::unfold((rx, Some(last)), move |(mut rx, mut last)| async move {
        match tokio::time::timeout(keepalive, rx.recv()).await {
            Ok(Some(chunk)) => return Some((Ok(chunk.text), (rx, last))),
            Err(_) => return Some((Ok(Bytes::from_static(b":keepalive\n\n")), (rx, last))),
            // The pump has ended: its final event, if any, then the end.
            Ok(None) => {}
        }
        let text = last.take()?.await.ok()?;
        Some((Ok(text), (rx, last)))
    })
}

/// Who a pump serves.
struct Follower {
    bus: picloud_bus::Bus,
    script: String,
    after: Option<LogCursor>,
    shutdown: picloud_core::Shutdown,
    /// Events the follower's buffer still holds room for.
    room: Arc<Semaphore>,
}

type Batches = std::pin::Pin<Box<dyn Stream<Item = Result<LogBatch, BusError>> + Send>>;

/// Moves events from the consumer to the follower's channel, one chunk per
/// message, until the follower goes, the stream fails, or the follower's
/// buffer stays full for [`SLOW_READER_GRACE`].
async fn pump(
    follower: Follower,
    mut batches: Batches,
    tx: mpsc::Sender<Chunk>,
    last: oneshot::Sender<Bytes>,
) {
    let Follower {
        bus,
        script,
        after,
        shutdown,
        room,
    } = follower;
    let capacity = u32::try_from(room.available_permits()).unwrap_or(u32::MAX);
    let mut text = BytesMut::new();
    loop {
        let batch = tokio::select! {
            _ = tx.closed() => return,
            _ = shutdown.cancelled() => return,
            b = batches.next() => b,
        };
        let batch = match batch {
            Some(Ok(b)) => b,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "live-log follower's consumer failed");
                let _ = last.send(final_event(
                    "error",
                    &json!({"type": "error", "message": "the live log failed; reconnect with Last-Event-ID"}),
                ));
                return;
            }
            None => return,
        };
        // Events of this message the follower has not seen yet.
        let first = match after {
            Some(c) => (0..batch.len())
                .find(|&i| c.is_before(batch.seq, i))
                .unwrap_or(batch.len()),
            None => 0,
        };
        if first == batch.len() {
            continue;
        }
        for i in first..batch.len() {
            write_event(&mut text, batch.seq, i, batch.raw(i));
        }
        // A message larger than the whole buffer takes all of it.
        let n = u32::try_from(batch.len() - first)
            .unwrap_or(u32::MAX)
            .min(capacity);
        let permit = match room.clone().try_acquire_many_owned(n) {
            Ok(p) => p,
            Err(_) => {
                let waited = tokio::select! {
                    _ = tx.closed() => return,
                    p = tokio::time::timeout(SLOW_READER_GRACE, room.clone().acquire_many_owned(n)) => p,
                };
                match waited {
                    Ok(Ok(p)) => p,
                    // Nothing of this message was sent: all of it is missed.
                    _ => {
                        // Everything in the stream by now, from here on.
                        let end = bus.last_log_seq(&script).await.unwrap_or(batch.seq);
                        let missed = count_missed(&batch, first, end, &mut batches).await;
                        let _ = last.send(overflow(missed));
                        return;
                    }
                }
            }
        };
        let chunk = Chunk {
            text: text.split().freeze(),
            _room: Some(permit),
        };
        // The room taken above bounds the chunks queued: this never waits.
        if tx.send(chunk).await.is_err() {
            return;
        }
    }
}

/// Appends event `i` of message `seq` as one Server-Sent Event: its id,
/// its kind, and its JSON with the id added (spliced into the object the
/// executor wrote, which is not decoded).
fn write_event(out: &mut BytesMut, seq: u64, i: usize, (json, line): (&[u8], bool)) {
    use std::fmt::Write;
    let id = LogCursor::at(seq, i);
    // (Formatting into a BytesMut cannot fail.)
    let _ = write!(
        out,
        "id: {id}\nevent: {}\ndata: {{\"id\":\"{id}\",",
        if line { "line" } else { "end" }
    );
    // The object's fields after its `{` (an event always has a `type`).
    out.extend_from_slice(&json[1..]);
    out.extend_from_slice(b"\n\n");
}

/// Events and lines a cut-off follower has missed: the events of the
/// message (at `batch.seq`) it overflowed on from `first`, and the stream's
/// messages after it up to `end` (counted for at most [`COUNT_MISSED_FOR`]).
async fn count_missed(
    batch: &LogBatch,
    first: usize,
    end: u64,
    batches: &mut Batches,
) -> (u64, u64) {
    let (mut events, mut missed_lines) = ((batch.len() - first) as u64, batch.lines_from(first));
    let mut seq = batch.seq;
    let until = tokio::time::Instant::now() + COUNT_MISSED_FOR;
    while seq < end {
        match tokio::time::timeout_at(until, batches.next()).await {
            Ok(Some(Ok(b))) => {
                events += b.len() as u64;
                missed_lines += b.lines_from(0);
                seq = b.seq;
            }
            _ => break,
        }
    }
    (events, missed_lines)
}

fn overflow((events, lines): (u64, u64)) -> Bytes {
    final_event(
        "overflow",
        &json!({
            "type": "overflow",
            "missed": lines,
            "missed_events": events,
            "message": format!(
                "this reader fell behind and was disconnected: it missed {lines} lines \
                 ({events} events); reconnect with Last-Event-ID to read them"
            ),
        }),
    )
}

/// The last event of a stream: no id, so a client's Last-Event-ID stays
/// the last event it received.
fn final_event(kind: &'static str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {kind}\ndata: {data}\n\n"))
}

/// `GET /invocations/{id}/logs`: one invocation's lines, from its record
/// (the last attempt stored).
#[utoipa::path(get, path = "/api/v1/invocations/{id}/logs", tag = "logs",
    params(super::openapi::IdParam),
    responses(
        (status = 200, description = "`{\"invocation\", \"script\", \"attempt\", \"status\", \"started_at\", \"lines\": [...]}`", body = Object),
        (status = 400, description = "bad id", body = ErrorBody),
        (status = 401, description = "no or wrong admin token", body = ErrorBody),
        (status = 404, description = "no such invocation", body = ErrorBody),
        (status = 500, description = "server fault", body = ErrorBody),
    ))]
pub async fn invocation_logs(
    State(state): State<Shared>,
    JsonPath(id): JsonPath<String>,
) -> Result<Json<Value>, ApiError> {
    let record = super::invocations::record_of(&state, &id).await?;
    let lines: Vec<&str> = record.log.lines().collect();
    Ok(Json(json!({
        "invocation": record.id,
        "script": record.script,
        "attempt": record.attempt,
        "status": record.status,
        "started_at": record.started_at,
        "lines": lines,
    })))
}
