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

use crate::{BusError, Names, decode, encode};

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

pub(crate) async fn publish(
    js: &jetstream::Context,
    names: &Names,
    records: &[InvocationRecord],
) -> Result<(), BusError> {
    let ack = js
        .publish(names.records_subject(), encode(&records))
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
