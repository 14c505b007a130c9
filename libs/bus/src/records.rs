//! Invocation records: executors → `{P}_RECORDS` (work queue) → managers.
//!
//! Executors publish records in batches (one message carries many) so the
//! hot path pays for one JetStream write per batch, not per invocation.
//! Managers share one durable pull consumer; a batch is acked only after it
//! is in Postgres, and inserts are idempotent on the invocation id, so a
//! redelivery after a crash writes nothing twice.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, stream};
use futures::StreamExt;
use picloud_core::InvocationRecord;

use std::borrow::Cow;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use picloud_core::{InvocationStatus, ScriptResponse, Trigger, Uuid};
use serde::{Deserialize, Serialize};

use crate::{BusError, Names, decode};

const CONSUMER: &str = "managers";
/// Records not consumed within this age are dropped by the server (a
/// manager-less installation must not grow without bound).
const MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

pub(crate) async fn ensure_stream(
    js: &jetstream::Context,
    names: &Names,
    replicas: usize,
) -> Result<(), BusError> {
    crate::stream_made(
        js,
        stream::Config {
            name: names.records_stream(),
            subjects: vec![names.records_subject()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            max_age: MAX_AGE,
            num_replicas: replicas,
            ..Default::default()
        },
    )
    .await
    .map_err(BusError::js("records stream"))?;
    Ok(())
}

/// A batch of records being gathered, encoded as it grows: each record is
/// serialised once, straight into the message that carries it.
#[derive(Debug, Default)]
pub struct RecordBatchBuf {
    json: Vec<u8>,
    len: usize,
}

impl RecordBatchBuf {
    /// A record's encoding, to [`push`](Self::push) (its length decides
    /// whether it still fits the batch).
    pub fn encode(record: &InvocationRecord) -> Vec<u8> {
        serde_json::to_vec(&WireRecord::of(record)).expect("records serialise")
    }

    /// Bytes the batch would have with `extra` more bytes of record.
    pub fn bytes_with(&self, extra: usize) -> usize {
        self.json.len() + extra + 2
    }

    pub fn push(&mut self, encoded: &[u8]) {
        self.json.push(if self.len == 0 { b'[' } else { b',' });
        self.json.extend_from_slice(encoded);
        self.len += 1;
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The message, a JSON array of the records, leaving the batch empty
    /// (the bytes move into it; nothing is copied).
    pub fn finish(&mut self) -> Bytes {
        if self.json.is_empty() {
            self.json.push(b'[');
        }
        self.json.push(b']');
        self.len = 0;
        Bytes::from(std::mem::take(&mut self.json))
    }
}

pub(crate) async fn publish(
    js: &jetstream::Context,
    names: &Names,
    batch: Bytes,
) -> Result<(), BusError> {
    let ack = js
        .publish_with_headers(names.records_subject(), crate::wire::headers(), batch)
        .await
        .map_err(|e| BusError::js("records publish")(e.into()))?;
    ack.await
        .map_err(|e| BusError::js("records publish ack")(e.into()))?;
    Ok(())
}

/// A batch received by a manager; call [`RecordBatch::ack`] once it is stored.
pub struct RecordBatch {
    pub records: Vec<InvocationRecord>,
    messages: Vec<jetstream::Message>,
}

impl RecordBatch {
    pub async fn ack(self) -> Result<(), BusError> {
        for m in self.messages {
            m.ack().await.map_err(|e| BusError::js("records ack")(e))?;
        }
        Ok(())
    }
}

pub struct RecordConsumer {
    messages: futures::stream::BoxStream<'static, Vec<Result<jetstream::Message, BusError>>>,
}

impl RecordConsumer {
    pub(crate) async fn open(js: &jetstream::Context, names: &Names) -> Result<Self, BusError> {
        let stream = js
            .get_stream(names.records_stream())
            .await
            .map_err(|e| BusError::js("records stream")(e.into()))?;
        let consumer: jetstream::consumer::PullConsumer = stream
            .get_or_create_consumer(
                CONSUMER,
                pull::Config {
                    durable_name: Some(CONSUMER.into()),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: Duration::from_secs(30),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| BusError::js("records consumer")(e.into()))?;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| BusError::js("records messages")(e.into()))?
            .map(|m| m.map_err(|e| BusError::js("records messages")(e.into())))
            // Everything already delivered, up to 64 messages, becomes one
            // batch (and one INSERT); an idle stream yields nothing.
            .ready_chunks(64)
            .boxed();
        Ok(Self { messages })
    }

    /// The next batch, or `None` when the consumer ends. A malformed message
    /// is logged and acked away (it can never become valid).
    pub async fn next(&mut self) -> Option<Result<RecordBatch, BusError>> {
        let chunk = self.messages.next().await?;
        let mut batch = RecordBatch {
            records: Vec::new(),
            messages: Vec::with_capacity(chunk.len()),
        };
        for m in chunk {
            let m = match m {
                Ok(m) => m,
                Err(e) => return Some(Err(e)),
            };
            if crate::wire::check(&m.subject, m.headers.as_ref()).is_err() {
                // Not acked: it comes back after the ack wait, for a
                // manager of the release that wrote it.
                continue;
            }
            match decode_batch(&m.subject, &m.payload) {
                Ok(records) => batch.records.extend(records),
                Err(e) => tracing::warn!(error = %e, "dropping malformed record batch"),
            }
            batch.messages.push(m);
        }
        Some(Ok(batch))
    }
}

/// A record as it travels in a batch: short keys, the start as Unix
/// microseconds, absent fields left out, and the trace id only when it is
/// not the invocation's own (as for every HTTP call). Half the bytes of the
/// record's API form for the NATS server to carry, and no timestamp to
/// format or parse.
#[derive(Serialize, Deserialize)]
struct WireRecord<'a> {
    i: Uuid,
    #[serde(borrow)]
    s: Cow<'a, str>,
    v: u32,
    k: Trigger,
    st: InvocationStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    h: Option<u16>,
    t: i64,
    d: u64,
    #[serde(default, borrow, skip_serializing_if = "str::is_empty")]
    l: Cow<'a, str>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    e: Option<Cow<'a, str>>,
    #[serde(borrow)]
    x: Cow<'a, str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tr: Option<Uuid>,
    a: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    p: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    r: Option<Cow<'a, ScriptResponse>>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pb: bool,
}

impl<'a> WireRecord<'a> {
    fn of(r: &'a InvocationRecord) -> Self {
        Self {
            i: r.id,
            s: Cow::Borrowed(&r.script),
            v: r.version,
            k: r.trigger,
            st: r.status,
            h: r.http_status,
            t: r.started_at.timestamp_micros(),
            d: r.duration_us,
            l: Cow::Borrowed(&r.log),
            e: r.error.as_deref().map(Cow::Borrowed),
            x: Cow::Borrowed(&r.executor),
            tr: (r.trace_id != r.id).then_some(r.trace_id),
            a: r.attempt,
            p: r.parent_id,
            r: r.response.as_ref().map(Cow::Borrowed),
            pb: r.public,
        }
    }

    fn into_record(self) -> InvocationRecord {
        InvocationRecord {
            id: self.i,
            script: self.s.into_owned(),
            version: self.v,
            trigger: self.k,
            status: self.st,
            http_status: self.h,
            started_at: DateTime::<Utc>::from_timestamp_micros(self.t).unwrap_or_default(),
            duration_us: self.d,
            log: self.l.into_owned(),
            error: self.e.map(Cow::into_owned),
            executor: self.x.into_owned(),
            trace_id: self.tr.unwrap_or(self.i),
            attempt: self.a,
            parent_id: self.p,
            response: self.r.map(Cow::into_owned),
            public: self.pb,
        }
    }
}

/// A batch's records. Batches published before the wire form existed (still
/// in the stream across an upgrade) are read in the records' API form.
fn decode_batch(subject: &str, payload: &[u8]) -> Result<Vec<InvocationRecord>, BusError> {
    match serde_json::from_slice::<Vec<WireRecord<'_>>>(payload) {
        Ok(wire) => Ok(wire.into_iter().map(WireRecord::into_record).collect()),
        Err(_) => decode::<Vec<InvocationRecord>>(subject, payload),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(trace_id: Option<Uuid>) -> InvocationRecord {
        let id = Uuid::now_v7();
        InvocationRecord {
            id,
            script: "wire".into(),
            version: 7,
            trigger: Trigger::Event,
            status: InvocationStatus::Error,
            http_status: None,
            started_at: DateTime::from_timestamp_micros(1_790_000_000_123_456).unwrap(),
            duration_us: 99,
            log: "line \"one\"\nline two ✓".into(),
            error: Some("boom".into()),
            executor: "host-1-abc".into(),
            trace_id: trace_id.unwrap_or(id),
            attempt: 3,
            parent_id: Some(Uuid::new_v4()),
            response: Some(ScriptResponse {
                status: 201,
                headers: vec![("x-a".into(), "b".into())],
                body: "{}".into(),
            }),
            public: true,
        }
    }

    fn batch(records: &[InvocationRecord]) -> Bytes {
        let mut buf = RecordBatchBuf::default();
        for r in records {
            buf.push(&RecordBatchBuf::encode(r));
        }
        buf.finish()
    }

    #[test]
    fn records_survive_the_wire_form_exactly() {
        let full = record(Some(Uuid::new_v4()));
        let own_trace = record(None);
        let mut bare = record(None);
        (
            bare.log,
            bare.error,
            bare.parent_id,
            bare.response,
            bare.public,
        ) = (String::new(), None, None, None, false);
        bare.http_status = Some(200);
        let records = vec![full, own_trace, bare];
        let payload = batch(&records);
        assert_eq!(decode_batch("s", &payload).unwrap(), records);
        assert_eq!(decode_batch("s", b"[]").unwrap(), vec![]);
    }

    #[test]
    fn the_wire_form_is_smaller_and_old_batches_still_read() {
        let mut r = record(None);
        (r.log, r.error, r.parent_id, r.response, r.public) =
            (String::new(), None, None, None, false);
        let wire = RecordBatchBuf::encode(&r).len();
        let api = serde_json::to_vec(&r).unwrap().len();
        assert!(wire * 3 < api * 2, "wire {wire} bytes, API form {api}");
        // A batch in the API form (published before the wire form).
        let old = serde_json::to_vec(&vec![r.clone()]).unwrap();
        assert_eq!(decode_batch("s", &old).unwrap(), vec![r]);
        assert!(decode_batch("s", b"{not json").is_err());
    }
}
