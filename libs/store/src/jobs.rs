//! Subscriptions, dead letters and async HTTP submissions: the Postgres side
//! of async jobs.

use chrono::{DateTime, Utc};
use picloud_core::{InvocationRecord, Job};
use uuid::Uuid;

use crate::outbox::{self, OutboxRow};
use crate::{Store, StoreError, rows};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionRow {
    pub id: Uuid,
    pub script: String,
    /// Topic pattern (NATS wildcards).
    pub topic: String,
    pub max_attempts: u32,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetterRow {
    pub id: Uuid,
    pub invocation_id: Uuid,
    pub script: String,
    pub subscription_id: Option<Uuid>,
    pub job: Job,
    pub error: String,
    pub attempts: u32,
    pub created_at: DateTime<Utc>,
    pub replayed_at: Option<DateTime<Utc>>,
}

/// The result of an async HTTP submission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submitted {
    /// Accepted now, as this invocation.
    New(Uuid),
    /// The idempotency key was used within 24 h by the same request: the
    /// earlier invocation.
    Existing(Uuid),
    /// The idempotency key was used within 24 h by another request (or
    /// before fingerprints were stored): refused, and nothing about the
    /// earlier call may be shown.
    KeyReused,
    /// Another submission with this key is being accepted right now.
    InFlight,
}

/// A `subscriptions` row.
#[derive(sqlx::FromRow)]
pub(crate) struct SubscriptionRecord {
    pub(crate) id: Uuid,
    pub(crate) script: String,
    pub(crate) topic: String,
    pub(crate) max_attempts: i32,
    pub(crate) created_at: DateTime<Utc>,
}

impl TryFrom<SubscriptionRecord> for SubscriptionRow {
    type Error = StoreError;

    fn try_from(r: SubscriptionRecord) -> Result<Self, StoreError> {
        Ok(SubscriptionRow {
            id: r.id,
            script: r.script,
            topic: r.topic,
            max_attempts: rows::int(r.max_attempts, "subscription max_attempts")?,
            created_at: r.created_at,
        })
    }
}

/// A `dead_letters` row.
#[derive(sqlx::FromRow)]
struct DeadLetterRecord {
    id: Uuid,
    invocation_id: Uuid,
    script: String,
    subscription_id: Option<Uuid>,
    /// The job's JSON bytes (see `json_bytes`).
    job: Vec<u8>,
    error: String,
    attempts: i32,
    created_at: DateTime<Utc>,
    replayed_at: Option<DateTime<Utc>>,
}

impl TryFrom<DeadLetterRecord> for DeadLetterRow {
    type Error = StoreError;

    fn try_from(r: DeadLetterRecord) -> Result<Self, StoreError> {
        Ok(DeadLetterRow {
            id: r.id,
            invocation_id: r.invocation_id,
            script: r.script,
            subscription_id: r.subscription_id,
            job: crate::json_bytes::decode(r.job, "dead letter job")?,
            error: r.error,
            attempts: rows::int(r.attempts, "dead letter attempts")?,
            created_at: r.created_at,
            replayed_at: r.replayed_at,
        })
    }
}

/// The columns of a [`SubscriptionRecord`].
macro_rules! subscription_cols {
    () => {
        "id, script, topic, max_attempts, created_at"
    };
}

/// The columns of a [`DeadLetterRecord`].
macro_rules! dead_letter_cols {
    () => {
        "id, invocation_id, script, subscription_id, job, error, attempts, created_at, replayed_at"
    };
}

impl Store {
    pub async fn create_subscription(
        &self,
        script: &str,
        topic: &str,
        max_attempts: u32,
    ) -> Result<SubscriptionRow, StoreError> {
        let row: SubscriptionRecord = sqlx::query_as(concat!(
            "INSERT INTO subscriptions (id, script, topic, max_attempts)
             VALUES ($1, $2, $3, $4) RETURNING ",
            subscription_cols!()
        ))
        .bind(Uuid::new_v4())
        .bind(script)
        .bind(topic)
        .bind(max_attempts as i32)
        .fetch_one(&self.pool)
        .await?;
        row.try_into()
    }

    /// Every subscription, or those of one script; oldest first.
    pub async fn list_subscriptions(
        &self,
        script: Option<&str>,
    ) -> Result<Vec<SubscriptionRow>, StoreError> {
        sqlx::query_as::<_, SubscriptionRecord>(concat!(
            "SELECT ",
            subscription_cols!(),
            " FROM subscriptions WHERE ($1::text IS NULL OR script = $1)
             ORDER BY created_at, id"
        ))
        .bind(script)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(SubscriptionRow::try_from)
        .collect()
    }

    /// `false` when there was no such subscription.
    pub async fn delete_subscription(&self, id: Uuid) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM subscriptions WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Drops what hangs off a deleted script, in one transaction: its
    /// subscriptions, its schedules and its kv (a script deployed later
    /// under the same name starts with none of them).
    pub async fn forget_script(&self, script: &str) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        // The script's kv lock, exclusive: no commit of its kv is between
        // its read check and its end while the rows go (see `commit`).
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('picloud.kv.' || $1, 0))")
            .bind(script)
            .execute(&mut *tx)
            .await?;
        for statement in [
            "DELETE FROM subscriptions WHERE script = $1",
            "DELETE FROM schedules WHERE script = $1",
            "DELETE FROM kv WHERE script = $1",
        ] {
            sqlx::query(statement)
                .bind(script)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Records a job's final failure (its record and the dead letter) in one
    /// transaction. A second report of the same open dead letter is ignored.
    pub async fn insert_dead_letter(
        &self,
        record: &InvocationRecord,
        job: &Job,
        error: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        Store::upsert_one(&mut tx, record).await?;
        sqlx::query(
            "INSERT INTO dead_letters (id, invocation_id, script, subscription_id, job, error, attempts)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (invocation_id) WHERE replayed_at IS NULL DO NOTHING",
        )
        .bind(Uuid::new_v4())
        .bind(job.id)
        .bind(&job.script)
        .bind(job.subscription_id)
        .bind(crate::json_bytes::encode(job))
        .bind(error.replace('\0', "\u{FFFD}"))
        .bind(record.attempt as i32)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Whether `invocation` ended as a dead letter (not replayed since).
    pub async fn is_dead_lettered(&self, invocation: Uuid) -> Result<bool, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM dead_letters WHERE invocation_id = $1 AND replayed_at IS NULL)",
        )
        .bind(invocation)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Newest first.
    pub async fn list_dead_letters(
        &self,
        script: Option<&str>,
        limit: u32,
    ) -> Result<Vec<DeadLetterRow>, StoreError> {
        sqlx::query_as::<_, DeadLetterRecord>(concat!(
            "SELECT ",
            dead_letter_cols!(),
            " FROM dead_letters WHERE ($1::text IS NULL OR script = $1)
             ORDER BY created_at DESC, id LIMIT $2"
        ))
        .bind(script)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(DeadLetterRow::try_from)
        .collect()
    }

    /// One dead letter, replayed or not.
    pub async fn get_dead_letter(&self, id: Uuid) -> Result<Option<DeadLetterRow>, StoreError> {
        sqlx::query_as::<_, DeadLetterRecord>(concat!(
            "SELECT ",
            dead_letter_cols!(),
            " FROM dead_letters WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .map(DeadLetterRow::try_from)
        .transpose()
    }

    /// Queues a dead letter's job again under a fresh message id (so the
    /// stream's dedup window does not swallow it) and marks it replayed, in
    /// one transaction. `None`: no such dead letter; `Some(false)`: it was
    /// replayed before.
    pub async fn replay_dead_letter(&self, id: Uuid) -> Result<Option<bool>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let Some(row) = sqlx::query_as::<_, DeadLetterRecord>(concat!(
            "SELECT ",
            dead_letter_cols!(),
            " FROM dead_letters WHERE id = $1 FOR UPDATE"
        ))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(None);
        };
        let dl = DeadLetterRow::try_from(row)?;
        if dl.replayed_at.is_some() {
            return Ok(Some(false));
        }
        requeue(&mut tx, &dl.job).await?;
        sqlx::query("UPDATE dead_letters SET replayed_at = now() WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(true))
    }

    /// Queues `job` again under a fresh message id, its attempts counted
    /// from 1 again: the operator's replay of a job still in the stream
    /// (whose message is removed once this has committed).
    pub async fn requeue_job(&self, job: &Job) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        requeue(&mut tx, job).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Ends the record of a job the operator removed from the stream before
    /// it succeeded: it stays as an error saying so.
    pub async fn record_discarded_job(&self, id: Uuid) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE invocations SET status = 'error', \
             error = 'discarded by an operator' || coalesce(' after: ' || error, '') \
             WHERE id = $1 AND status <> 'ok'",
        )
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Deletes a dead letter (replayed or not): the operator gives up on
    /// its job. `false` when there was no such dead letter.
    pub async fn discard_dead_letter(&self, id: Uuid) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM dead_letters WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Accepts an async HTTP call. With an idempotency key seen within 24 h:
    /// the earlier invocation when `fingerprint` (of the request, see the
    /// gateway) is the one stored with the key, [`Submitted::KeyReused`]
    /// when it is not (a key stored without a fingerprint matches nothing),
    /// and [`Submitted::InFlight`] while another submission of the key is
    /// still being accepted. Otherwise stores `queued` (the invocation's
    /// record, status queued) and runs `publish` (which must make the job
    /// durable on the bus, under `Nats-Msg-Id` = the invocation id) before
    /// committing, so the call is accepted exactly when its job is durable.
    ///
    /// When `publish` fails and `fallback` is the job, the job is queued in
    /// the outbox instead, in the same transaction, under the same message
    /// id (the relay publishes it; a publish that was stored although its
    /// ack was lost is then a duplicate JetStream drops), and the call is
    /// accepted all the same: durable in Postgres. Without `fallback` the
    /// failure is returned and nothing is stored.
    pub async fn submit_async<F>(
        &self,
        idempotency_key: Option<&str>,
        fingerprint: Option<&str>,
        queued: &InvocationRecord,
        fallback: Option<&Job>,
        publish: F,
    ) -> Result<Result<Submitted, String>, StoreError>
    where
        F: AsyncFnOnce() -> Result<(), String>,
    {
        let mut tx = self.pool.begin().await?;
        if let Some(key) = idempotency_key {
            // A concurrent submission of the same key holds this lock until
            // it commits or gives up: the IETF draft's 409, not a wait.
            // (Script names hold no '/', so the pair is unambiguous.)
            let locked: bool =
                sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtextextended($1, 12))")
                    .bind(format!("{}/{key}", queued.script))
                    .fetch_one(&mut *tx)
                    .await?;
            if !locked {
                tx.rollback().await?;
                return Ok(Ok(Submitted::InFlight));
            }
            // Takes the key, or finds who holds it (an expired key is taken
            // over, with this request's fingerprint).
            let (claimed, stored): (Uuid, Option<String>) = sqlx::query_as(
                "INSERT INTO idempotency_keys (script, key, invocation_id, fingerprint) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (script, key) DO UPDATE
                   SET invocation_id = CASE WHEN idempotency_keys.created_at < now() - interval '24 hours'
                                            THEN EXCLUDED.invocation_id ELSE idempotency_keys.invocation_id END,
                       fingerprint = CASE WHEN idempotency_keys.created_at < now() - interval '24 hours'
                                          THEN EXCLUDED.fingerprint ELSE idempotency_keys.fingerprint END,
                       created_at = CASE WHEN idempotency_keys.created_at < now() - interval '24 hours'
                                         THEN now() ELSE idempotency_keys.created_at END
                 RETURNING invocation_id, fingerprint",
            )
            .bind(&queued.script)
            .bind(key)
            .bind(queued.id)
            .bind(fingerprint)
            .fetch_one(&mut *tx)
            .await?;
            if claimed != queued.id {
                // Ended now, not when the pool gets to it: the lock is
                // released before the caller can retry.
                tx.rollback().await?;
                return Ok(Ok(match (stored.as_deref(), fingerprint) {
                    (Some(a), Some(b)) if a == b => Submitted::Existing(claimed),
                    _ => Submitted::KeyReused,
                }));
            }
        }
        Store::upsert_one(&mut tx, queued).await?;
        if let Err(e) = publish().await {
            let Some(job) = fallback else {
                tx.rollback().await?;
                return Ok(Err(e));
            };
            debug_assert_eq!(job.id, queued.id, "the job is the queued invocation");
            outbox::insert(&mut tx, &[OutboxRow::job(job).after_failed_publish()]).await?;
        }
        tx.commit().await?;
        Ok(Ok(Submitted::New(queued.id)))
    }
}

impl Store {
    /// Accepts async calls that carry no idempotency key together: their
    /// queued records in one transaction, each job published from inside
    /// it by `publish` (which says, in order, whether each is durable in
    /// JetStream), and the jobs whose publish failed written to the outbox
    /// in the same transaction. `Ok`: every call is accepted; `Err`:
    /// none is (the transaction rolled back). See [`Store::submit_async`]
    /// for why this loses and duplicates nothing.
    pub async fn submit_async_many<F>(
        &self,
        queued: &[&InvocationRecord],
        jobs: &[&Job],
        publish: F,
    ) -> Result<(), StoreError>
    where
        F: AsyncFnOnce() -> Vec<bool>,
    {
        debug_assert_eq!(queued.len(), jobs.len(), "one job per queued record");
        let mut tx = self.pool.begin().await?;
        crate::invocations::upsert(&mut tx, queued).await?;
        let published = publish().await;
        let unpublished: Vec<OutboxRow> = jobs
            .iter()
            .zip(published.iter().chain(std::iter::repeat(&false)))
            .filter(|(_, ok)| !**ok)
            .map(|(job, _)| OutboxRow::job(job).after_failed_publish())
            .collect();
        outbox::insert(&mut tx, &unpublished).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Queues `job` under a fresh outbox id (so the stream's dedup window does
/// not swallow it); its attempts count from 1 again, so its records replace
/// the earlier ones.
async fn requeue(tx: &mut sqlx::PgConnection, job: &Job) -> Result<(), StoreError> {
    outbox::insert(&mut *tx, &[OutboxRow::job_with_id(Uuid::new_v4(), job)]).await?;
    sqlx::query(
        "UPDATE invocations SET status = 'queued', attempt = 0 WHERE id = $1 AND status <> 'ok'",
    )
    .bind(job.id)
    .execute(&mut *tx)
    .await?;
    Ok(())
}
