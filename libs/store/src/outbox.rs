//! The transactional outbox: rows written in the same transaction as the
//! state change that causes them, published to NATS by the relay
//! (`picloud_manager::relay`) under [`OutboxRow::message_id`], then deleted.
//!
//! Inserting wakes every relay: a statement trigger sends
//! `NOTIFY picloud_outbox` when the inserting transaction commits.
//!
//! A kv commit's rows are inserted *deferred* ([`insert_deferred`]): the
//! committing manager publishes them itself as soon as the transaction
//! commits and deletes them ([`Store::settle_outbox`]), saving the relay's
//! two transactions on the way from an emit to its subscribers; a relay
//! takes them only once [`PUBLISHER_GRACE`] has passed (the manager died
//! or could not publish). Either way they are published at least once, and
//! JetStream's dedup window and the commit keyed by invocation id make
//! that once in effect.
//!
//! A row whose publish failed is published again under a message id of its
//! own ([`OutboxRow::message_id`]), not under the one that failed: a
//! nats-server before 2.11 may keep the id of a publish it lost in a stream
//! leader change in its dedup window and acknowledge the retry as a
//! duplicate without storing anything (nats-server PRs 6415, 6486). A
//! retry of a publish that was in fact stored then makes a second copy,
//! which runs the job twice but applies it once (its commit and record are
//! keyed by invocation id).

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
    /// The row's id: its first publish's `Nats-Msg-Id` (JetStream dedups
    /// on it).
    pub id: Uuid,
    pub kind: OutboxKind,
    pub target: String,
    pub payload: serde_json::Value,
    /// Publishes of it that failed so far.
    pub tries: u32,
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
            tries: 0,
        }
    }

    /// This row, whose publish under its id just failed.
    pub fn after_failed_publish(mut self) -> Self {
        self.tries += 1;
        self
    }

    /// The `Nats-Msg-Id` to publish it under: its id the first time, and a
    /// new one after every failed try (see the module's docs for why).
    pub fn message_id(&self) -> String {
        match self.tries {
            0 => self.id.to_string(),
            n => format!("{}.{n}", self.id),
        }
    }

    pub fn event(event: &EventMessage) -> Self {
        Self {
            id: event.id,
            kind: OutboxKind::Event,
            target: event.topic.clone(),
            payload: serde_json::to_value(event).expect("events serialise"),
            tries: 0,
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
    tries: i32,
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
            tries: r.tries.max(0) as u32,
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
    let tries: Vec<i32> = rows.iter().map(|r| r.tries as i32).collect();
    sqlx::query(
        "INSERT INTO outbox (id, kind, target, payload, relay_after, tries)
         SELECT u.id, u.kind, u.target, u.payload, now() + $5 * interval '1 millisecond', u.tries
         FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::bytea[], $6::int[])
              AS u(id, kind, target, payload, tries)
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(ids)
    .bind(kinds)
    .bind(targets)
    .bind(payloads)
    .bind(due_in.as_millis() as f64)
    .bind(tries)
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
    /// After every claimed row was tried: deletes those in `published`
    /// and counts a failed try for the rest.
    pub async fn finish(mut self, published: &[Uuid]) -> Result<(), StoreError> {
        settle(&mut self.tx, &self.rows, published).await?;
        self.tx.commit().await?;
        Ok(())
    }

    /// Releases the rows untried (they were only looked at).
    pub async fn release(self) -> Result<(), StoreError> {
        self.tx.commit().await?;
        Ok(())
    }
}

/// Deletes the tried `rows` that are in `published`; counts a failed
/// publish of each other one and makes it due for a relay now.
async fn settle(
    conn: &mut PgConnection,
    rows: &[OutboxRow],
    published: &[Uuid],
) -> Result<(), StoreError> {
    if !published.is_empty() {
        sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
            .bind(published)
            .execute(&mut *conn)
            .await?;
    }
    let stored: std::collections::HashSet<&Uuid> = published.iter().collect();
    let failed: Vec<Uuid> = rows
        .iter()
        .map(|r| r.id)
        .filter(|id| !stored.contains(id))
        .collect();
    if !failed.is_empty() {
        sqlx::query("UPDATE outbox SET tries = tries + 1, relay_after = now() WHERE id = ANY($1)")
            .bind(failed)
            .execute(conn)
            .await?;
    }
    Ok(())
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
            "SELECT id, kind, target, payload, tries FROM outbox WHERE $2 OR relay_after <= now()
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

    /// Settles the rows their publisher tried (`rows`): deletes those in
    /// `published` and counts a failed try for the rest, which a relay
    /// then takes at once. Not flushed to disk before it returns
    /// (`synchronous_commit = off`): a delete lost in a crash only lets a
    /// relay publish the rows again, which the dedup window and the
    /// commits keyed by invocation id absorb; a lost count only lets the
    /// relay retry under the id that failed.
    pub async fn settle_outbox(
        &self,
        rows: &[OutboxRow],
        published: &[Uuid],
    ) -> Result<(), StoreError> {
        if rows.is_empty() && published.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(&mut *tx)
            .await?;
        settle(&mut tx, rows, published).await?;
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
