//! The transactional outbox: rows written in the same transaction as the
//! state change that causes them, published to NATS by the relay
//! (`picloud_manager::relay`) with `Nats-Msg-Id` = row id, then deleted.
//!
//! Inserting wakes every relay: a statement trigger sends
//! `NOTIFY picloud_outbox` when the inserting transaction commits.
//!
//! A kv commit's rows are inserted *deferred* ([`insert_deferred`]): the
//! committing manager publishes them itself as soon as the transaction
//! commits and deletes them ([`Store::delete_outbox`]), saving the relay's
//! two transactions on the way from an emit to its subscribers; a relay
//! takes them only once [`PUBLISHER_GRACE`] has passed (the manager died
//! or could not publish). Either way they are published at least once, and
//! JetStream's dedup window and the commit keyed by invocation id make
//! that once in effect.

use std::time::Duration;

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

/// How long a relay leaves the rows of a commit to the manager that
/// committed them.
pub const PUBLISHER_GRACE: Duration = Duration::from_secs(2);

/// Inserts `rows` on `conn` (normally inside the caller's transaction), due
/// for the relays at once. A row whose id is already queued is skipped.
pub async fn insert(conn: &mut PgConnection, rows: &[OutboxRow]) -> Result<(), StoreError> {
    insert_due_in(conn, &rows.iter().collect::<Vec<_>>(), Duration::ZERO).await
}

/// [`insert`], left to the inserting manager to publish for
/// [`PUBLISHER_GRACE`] before a relay takes the rows.
pub async fn insert_deferred(
    conn: &mut PgConnection,
    rows: &[OutboxRow],
) -> Result<(), StoreError> {
    insert_deferred_refs(conn, &rows.iter().collect::<Vec<_>>()).await
}

/// [`insert_deferred`] of rows held elsewhere.
pub(crate) async fn insert_deferred_refs(
    conn: &mut PgConnection,
    rows: &[&OutboxRow],
) -> Result<(), StoreError> {
    insert_due_in(conn, rows, PUBLISHER_GRACE).await
}

async fn insert_due_in(
    conn: &mut PgConnection,
    rows: &[&OutboxRow],
    due_in: Duration,
) -> Result<(), StoreError> {
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
        "INSERT INTO outbox (id, kind, target, payload, relay_after)
         SELECT u.id, u.kind, u.target, u.payload, now() + $5 * interval '1 millisecond'
         FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::bytea[]) AS u(id, kind, target, payload)
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(ids)
    .bind(kinds)
    .bind(targets)
    .bind(payloads)
    .bind(due_in.as_millis() as f64)
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
    /// Claims up to `limit` of the oldest unclaimed rows, due or not (a
    /// look at everything queued).
    pub async fn claim_outbox(&self, limit: u32) -> Result<Claim, StoreError> {
        self.claim(limit, true).await
    }

    /// Claims up to `limit` of the oldest unclaimed rows that are due for
    /// a relay (see [`PUBLISHER_GRACE`]).
    pub async fn claim_due_outbox(&self, limit: u32) -> Result<Claim, StoreError> {
        self.claim(limit, false).await
    }

    async fn claim(&self, limit: u32, all: bool) -> Result<Claim, StoreError> {
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query_as::<_, OutboxRecord>(
            "SELECT id, kind, target, payload FROM outbox WHERE $2 OR relay_after <= now()
             ORDER BY created_at LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(i64::from(limit))
        .bind(all)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(OutboxRow::try_from)
        .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(Claim { tx, rows })
    }

    /// How long until the next row not yet due for a relay is (zero when
    /// one is due now); `None` when the outbox is empty.
    pub async fn next_outbox_due(&self) -> Result<Option<Duration>, StoreError> {
        let secs: Option<f64> = sqlx::query_scalar(
            "SELECT EXTRACT(EPOCH FROM min(relay_after) - now())::float8 FROM outbox",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(secs.map(|s| Duration::from_secs_f64(s.clamp(0.0, 3600.0))))
    }

    /// Deletes rows their publisher has published. Not flushed to disk
    /// before it returns (`synchronous_commit = off`): a delete lost in a
    /// crash only lets a relay publish the rows again, which the dedup
    /// window and the commits keyed by invocation id absorb.
    pub async fn delete_outbox(&self, published: &[Uuid]) -> Result<(), StoreError> {
        if published.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
            .bind(published)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
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
