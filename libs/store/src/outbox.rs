//! The transactional outbox: rows written in the same transaction as the
//! state change that causes them, published to NATS by the relay
//! (`picloud_manager::relay`) with `Nats-Msg-Id` = row id, then deleted.
//!
//! Inserting wakes every relay: a statement trigger sends
//! `NOTIFY picloud_outbox` when the inserting transaction commits.

use picloud_core::{EventMessage, Job};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{Notifications, Store, StoreError};

/// The channel relays `LISTEN` on.
pub const CHANNEL: &str = "picloud_outbox";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxKind {
    /// A [`Job`] for the jobs stream; `target` is the script.
    Job,
    /// An [`EventMessage`] for the event stream; `target` is the topic.
    Event,
}

impl OutboxKind {
    fn as_str(self) -> &'static str {
        match self {
            OutboxKind::Job => "job",
            OutboxKind::Event => "event",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRow {
    /// The message's `Nats-Msg-Id` (JetStream dedups on it).
    pub id: Uuid,
    pub kind: OutboxKind,
    pub target: String,
    pub payload: serde_json::Value,
}

impl OutboxRow {
    /// A job, deduplicated on its invocation id.
    pub fn job(job: &Job) -> Self {
        Self::job_with_id(job.id, job)
    }

    /// A job under a message id of its own (a replay must not be swallowed
    /// by the dedup window of the first publication).
    pub fn job_with_id(message_id: Uuid, job: &Job) -> Self {
        Self {
            id: message_id,
            kind: OutboxKind::Job,
            target: job.script.clone(),
            payload: serde_json::to_value(job).expect("jobs serialise"),
        }
    }

    pub fn event(event: &EventMessage) -> Self {
        Self {
            id: event.id,
            kind: OutboxKind::Event,
            target: event.topic.clone(),
            payload: serde_json::to_value(event).expect("events serialise"),
        }
    }
}

/// An `outbox` row.
#[derive(sqlx::FromRow)]
struct OutboxRecord {
    id: Uuid,
    kind: String,
    target: String,
    /// The payload's JSON bytes (see `json_bytes`).
    payload: Vec<u8>,
}

impl TryFrom<OutboxRecord> for OutboxRow {
    type Error = StoreError;

    fn try_from(r: OutboxRecord) -> Result<Self, StoreError> {
        Ok(OutboxRow {
            id: r.id,
            kind: match r.kind.as_str() {
                "job" => OutboxKind::Job,
                "event" => OutboxKind::Event,
                other => return Err(StoreError::Corrupt(format!("outbox kind {other:?}"))),
            },
            target: r.target,
            payload: crate::json_bytes::decode(r.payload, "outbox payload")?,
        })
    }
}

/// Inserts `rows` on `conn` (normally inside the caller's transaction). A
/// row whose id is already queued is skipped.
pub async fn insert(conn: &mut PgConnection, rows: &[OutboxRow]) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let kinds: Vec<&str> = rows.iter().map(|r| r.kind.as_str()).collect();
    let targets: Vec<&str> = rows.iter().map(|r| r.target.as_str()).collect();
    let payloads: Vec<Vec<u8>> = rows
        .iter()
        .map(|r| crate::json_bytes::encode(&r.payload))
        .collect();
    sqlx::query(
        "INSERT INTO outbox (id, kind, target, payload)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::bytea[])
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(ids)
    .bind(kinds)
    .bind(targets)
    .bind(payloads)
    .execute(conn)
    .await?;
    Ok(())
}

/// Rows a relay has claimed: locked (`FOR UPDATE SKIP LOCKED`, so other
/// relays take other rows) until [`Claim::finish`] deletes the published
/// ones and commits.
pub struct Claim {
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    pub rows: Vec<OutboxRow>,
}

impl Claim {
    /// Deletes the rows in `published` and releases the rest.
    pub async fn finish(mut self, published: &[Uuid]) -> Result<(), StoreError> {
        if !published.is_empty() {
            sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
                .bind(published)
                .execute(&mut *self.tx)
                .await?;
        }
        self.tx.commit().await?;
        Ok(())
    }
}

impl Store {
    /// Claims up to `limit` of the oldest unclaimed rows.
    pub async fn claim_outbox(&self, limit: u32) -> Result<Claim, StoreError> {
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query_as::<_, OutboxRecord>(
            "SELECT id, kind, target, payload FROM outbox
             ORDER BY created_at LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(OutboxRow::try_from)
        .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(Claim { tx, rows })
    }

    /// Rows waiting to be published.
    pub async fn outbox_len(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(&self.pool)
            .await?)
    }

    /// Rows waiting to be published and the age of the oldest, in seconds
    /// (0 when empty): the relay's lag, read on a metrics scrape.
    pub async fn outbox_lag(&self) -> Result<(i64, f64), StoreError> {
        let (rows, age): (i64, Option<f64>) = sqlx::query_as(
            "SELECT count(*), EXTRACT(EPOCH FROM now() - min(created_at))::float8 FROM outbox",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok((rows, age.unwrap_or(0.0).max(0.0)))
    }

    /// Notifications of inserted outbox rows, already listening.
    pub async fn outbox_notifications(&self) -> Result<Notifications, StoreError> {
        Notifications::listen(&self.pool, CHANNEL).await
    }
}
