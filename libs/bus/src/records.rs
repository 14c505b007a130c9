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

use bytes::Bytes;

use crate::{BusError, Names, decode};

const CONSUMER: &str = "managers";
/// Records not consumed within this age are dropped by the server (a
/// manager-less installation must not grow without bound).
const MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

pub(crate) async fn ensure_stream(js: &jetstream::Context, names: &Names) -> Result<(), BusError> {
    js.get_or_create_stream(stream::Config {
        name: names.records_stream(),
        subjects: vec![names.records_subject()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        max_age: MAX_AGE,
        ..Default::default()
    })
    .await
    .map_err(|e| BusError::js("records stream")(e.into()))?;
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
        serde_json::to_vec(record).expect("records serialise")
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

    /// The message: a JSON array of the records.
    pub fn payload(&self) -> Bytes {
        let mut out = Vec::with_capacity(self.json.len() + 2);
        if self.json.is_empty() {
            out.push(b'[');
        } else {
            out.extend_from_slice(&self.json);
        }
        out.push(b']');
        Bytes::from(out)
    }

    pub fn clear(&mut self) {
        self.json.clear();
        self.len = 0;
    }
}

pub(crate) async fn publish(
    js: &jetstream::Context,
    names: &Names,
    batch: Bytes,
) -> Result<(), BusError> {
    let ack = js
        .publish(names.records_subject(), batch)
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
            match decode::<Vec<InvocationRecord>>(&m.subject, &m.payload) {
                Ok(records) => batch.records.extend(records),
                Err(e) => tracing::warn!(error = %e, "dropping malformed record batch"),
            }
            batch.messages.push(m);
        }
        Some(Ok(batch))
    }
}
