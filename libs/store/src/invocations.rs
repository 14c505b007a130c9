//! The invocation log. Records arrive in batches and are inserted with one
//! statement per batch; a record seen twice (redelivery) is ignored.

use chrono::{DateTime, Utc};
use picloud_core::{InvocationRecord, InvocationStatus, Trigger};
use uuid::Uuid;

use crate::{Store, StoreError, rows};

#[derive(Debug, Clone, Default)]
pub struct InvocationFilter {
    pub script: Option<String>,
    pub status: Option<InvocationStatus>,
    pub trigger: Option<picloud_core::Trigger>,
    /// Started at or after.
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Started before.
    pub until: Option<chrono::DateTime<chrono::Utc>>,
    pub limit: u32,
}

/// One report of an invocation: an attempt, or a run of it that could not
/// be committed.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct AttemptRow {
    pub attempt: u32,
    pub status: InvocationStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub duration_us: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub executor: String,
}

impl AttemptRow {
    /// The report a record is.
    pub fn of(r: &InvocationRecord) -> Self {
        Self {
            attempt: r.attempt,
            status: r.status,
            http_status: r.http_status,
            started_at: r.started_at,
            duration_us: r.duration_us,
            error: r.error.clone(),
            executor: r.executor.clone(),
        }
    }
}

/// The columns of a [`StoredInvocation`], in the order `copy` writes them.
macro_rules! invocation_cols {
    () => {
        "id, script, version, trigger, status, http_status, started_at, duration_us, log, error, \
         executor, trace_id, attempt, parent_id, response, public"
    };
}

/// The columns `invocations` and `invocation_attempts` share.
#[derive(sqlx::FromRow)]
struct AttemptRecord {
    attempt: i32,
    status: String,
    http_status: Option<i32>,
    started_at: DateTime<Utc>,
    duration_us: i64,
    error: Option<String>,
    executor: String,
}

impl TryFrom<AttemptRecord> for AttemptRow {
    type Error = StoreError;

    fn try_from(r: AttemptRecord) -> Result<Self, StoreError> {
        Ok(AttemptRow {
            attempt: rows::int(r.attempt, "invocation attempt")?,
            status: rows::named(&r.status, InvocationStatus::parse, "invocation status")?,
            http_status: r
                .http_status
                .map(|s| rows::int(s, "invocation http_status"))
                .transpose()?,
            started_at: r.started_at,
            duration_us: rows::int(r.duration_us, "invocation duration_us")?,
            error: r.error,
            executor: r.executor,
        })
    }
}

/// An `invocations` row.
#[derive(sqlx::FromRow)]
struct StoredInvocation {
    id: Uuid,
    script: String,
    version: i32,
    trigger: String,
    #[sqlx(flatten)]
    report: AttemptRecord,
    log: String,
    trace_id: Uuid,
    parent_id: Option<Uuid>,
    /// The response's JSON bytes (see `json_bytes`).
    response: Option<Vec<u8>>,
    public: bool,
}

impl TryFrom<StoredInvocation> for InvocationRecord {
    type Error = StoreError;

    fn try_from(r: StoredInvocation) -> Result<Self, StoreError> {
        let report = AttemptRow::try_from(r.report)?;
        Ok(InvocationRecord {
            id: r.id,
            script: r.script,
            version: rows::int(r.version, "invocation version")?,
            trigger: rows::named(&r.trigger, Trigger::parse, "invocation trigger")?,
            status: report.status,
            http_status: report.http_status,
            started_at: report.started_at,
            duration_us: report.duration_us,
            log: r.log,
            error: report.error,
            executor: report.executor,
            trace_id: r.trace_id,
            attempt: report.attempt,
            parent_id: r.parent_id,
            response: r
                .response
                .map(|b| crate::json_bytes::decode(b, "invocation response"))
                .transpose()?,
            public: r.public,
        })
    }
}

fn no_nul(s: String) -> String {
    if s.contains('\0') {
        s.replace('\0', "\u{FFFD}")
    } else {
        s
    }
}

impl Store {
    /// Stores a batch of records. A record of an invocation already stored
    /// replaces it only as `upsert` allows (so a redelivered batch writes
    /// nothing twice).
    pub async fn insert_invocations(
        &self,
        records: &[InvocationRecord],
    ) -> Result<u64, StoreError> {
        // One statement may touch a row once: keep each id's latest attempt.
        let mut latest: std::collections::HashMap<Uuid, &InvocationRecord> =
            std::collections::HashMap::with_capacity(records.len());
        for r in records {
            let keep = latest.get(&r.id).is_none_or(|k| k.attempt <= r.attempt);
            if keep {
                latest.insert(r.id, r);
            }
        }
        // In id order, the order a commit batch takes its records' rows in
        // (`crate::commit`), so the two never wait for each other in a cycle.
        let mut records: Vec<&InvocationRecord> = latest.into_values().collect();
        records.sort_unstable_by_key(|r| r.id);
        if records.is_empty() {
            return Ok(0);
        }
        let mut conn = self.pool.acquire().await?;
        // Most batches are first attempts of sync calls, whose ids are new:
        // COPY them, which costs Postgres far less than an upsert. A batch
        // that meets a stored id (a redelivery, a replayed job) takes the
        // upsert instead, which writes only what it may overwrite.
        if records.iter().all(|r| fresh(r)) {
            match copy(&mut conn, &records).await {
                Ok(n) => return Ok(n),
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(upsert(&mut conn, &records).await?.len() as u64)
    }

    /// Stores one record as part of the caller's transaction; `false` when
    /// the invocation was already committed (`ok`).
    pub(crate) async fn upsert_one(
        conn: &mut sqlx::PgConnection,
        record: &InvocationRecord,
    ) -> Result<bool, StoreError> {
        Ok(upsert(conn, &[record]).await?.len() == 1)
    }

    /// The invocations `parent` caused (its emits' subscribers), oldest first.
    pub async fn invocation_children(
        &self,
        parent: Uuid,
    ) -> Result<Vec<InvocationRecord>, StoreError> {
        sqlx::query_as::<_, StoredInvocation>(concat!(
            "SELECT ",
            invocation_cols!(),
            " FROM invocations WHERE parent_id = $1 ORDER BY started_at, id LIMIT 1000"
        ))
        .bind(parent)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(InvocationRecord::try_from)
        .collect()
    }

    /// Deletes records older than `keep` (and idempotency keys older than a
    /// day), at most 10,000 of each per call.
    pub async fn prune(&self, keep: std::time::Duration) -> Result<u64, StoreError> {
        let cutoff = chrono::Utc::now()
            - chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::days(3650));
        let done = sqlx::query(
            "DELETE FROM invocations WHERE id IN
               (SELECT id FROM invocations WHERE started_at < $1 LIMIT 10000)",
        )
        .bind(cutoff)
        .execute(&self.pool)
        .await?;
        sqlx::query(
            "DELETE FROM idempotency_keys WHERE (script, key) IN
               (SELECT script, key FROM idempotency_keys
                WHERE created_at < now() - interval '24 hours' LIMIT 10000)",
        )
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Newest first.
    pub async fn list_invocations(
        &self,
        filter: &InvocationFilter,
    ) -> Result<Vec<InvocationRecord>, StoreError> {
        sqlx::query_as::<_, StoredInvocation>(concat!(
            "SELECT ",
            invocation_cols!(),
            " FROM invocations
             WHERE ($1::text IS NULL OR script = $1) AND ($2::text IS NULL OR status = $2)
               AND ($4::text IS NULL OR trigger = $4)
               AND ($5::timestamptz IS NULL OR started_at >= $5)
               AND ($6::timestamptz IS NULL OR started_at < $6)
             ORDER BY started_at DESC, id LIMIT $3"
        ))
        .bind(filter.script.as_deref())
        .bind(filter.status.map(|s| s.as_str()))
        .bind(i64::from(filter.limit))
        .bind(filter.trigger.map(|t| t.as_str()))
        .bind(filter.since)
        .bind(filter.until)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(InvocationRecord::try_from)
        .collect()
    }

    /// Every report of invocation `id` that a later one replaced, oldest
    /// first (at most 1,000): its earlier attempts.
    pub async fn earlier_attempts(&self, id: Uuid) -> Result<Vec<AttemptRow>, StoreError> {
        sqlx::query_as::<_, AttemptRecord>(
            "SELECT attempt, status, http_status, started_at, duration_us, error, executor
             FROM invocation_attempts WHERE invocation_id = $1 ORDER BY seq LIMIT 1000",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(AttemptRow::try_from)
        .collect()
    }

    /// The records of `ids` that exist, in no particular order.
    pub async fn get_invocations(&self, ids: &[Uuid]) -> Result<Vec<InvocationRecord>, StoreError> {
        sqlx::query_as::<_, StoredInvocation>(concat!(
            "SELECT ",
            invocation_cols!(),
            " FROM invocations WHERE id = ANY($1)"
        ))
        .bind(ids)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(InvocationRecord::try_from)
        .collect()
    }

    pub async fn get_invocation(&self, id: Uuid) -> Result<Option<InvocationRecord>, StoreError> {
        sqlx::query_as::<_, StoredInvocation>(concat!(
            "SELECT ",
            invocation_cols!(),
            " FROM invocations WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .map(InvocationRecord::try_from)
        .transpose()
    }
}

/// Likely the first report of its invocation: a first attempt that is not
/// an async call (those have a `queued` row) and carries no response.
fn fresh(r: &InvocationRecord) -> bool {
    r.attempt == 1 && !r.public && r.response.is_none() && r.status != InvocationStatus::Queued
}

/// Inserts `records` with one `COPY … FROM STDIN` (text format); fails as a
/// whole, with a unique violation, when one of the ids is already stored.
async fn copy(
    conn: &mut sqlx::PgConnection,
    records: &[&InvocationRecord],
) -> Result<u64, sqlx::Error> {
    let mut rows = String::with_capacity(records.len() * 200);
    for r in records {
        let started = r
            .started_at
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let error = r.error.as_deref().map(copy_text);
        let fields: [Option<&dyn std::fmt::Display>; 16] = [
            Some(&r.id),
            Some(&copy_text(&r.script)),
            Some(&r.version),
            Some(&r.trigger.as_str()),
            Some(&r.status.as_str()),
            r.http_status.as_ref().map(|s| s as _),
            Some(&started),
            Some(&r.duration_us),
            Some(&copy_text(&r.log)),
            error.as_ref().map(|e| e as _),
            Some(&copy_text(&r.executor)),
            Some(&r.trace_id),
            Some(&r.attempt),
            r.parent_id.as_ref().map(|p| p as _),
            None, // `fresh` records carry no response
            Some(&r.public),
        ];
        for (i, field) in fields.iter().enumerate() {
            if i > 0 {
                rows.push('\t');
            }
            match field {
                Some(v) => {
                    use std::fmt::Write as _;
                    let _ = write!(rows, "{v}");
                }
                None => rows.push_str("\\N"),
            }
        }
        rows.push('\n');
    }
    let mut copy = conn
        .copy_in_raw(concat!(
            "COPY invocations (",
            invocation_cols!(),
            ") FROM STDIN"
        ))
        .await?;
    if let Err(e) = copy.send(rows.into_bytes()).await {
        let _ = copy.abort("could not send the rows").await;
        return Err(e);
    }
    copy.finish().await
}

/// `s` as a value in COPY's text format: backslash escapes for the
/// characters it gives meaning to; NUL, which Postgres text cannot hold,
/// becomes U+FFFD.
fn copy_text(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.contains(['\\', '\t', '\n', '\r', '\0']) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\0' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Stores `records` (at most one per id) in one statement and returns the
/// ids it wrote: a record of an invocation already committed (`ok`), or
/// older than the stored attempt, is left as it is and not returned.
pub(crate) async fn upsert(
    conn: &mut sqlx::PgConnection,
    records: &[&InvocationRecord],
) -> Result<Vec<Uuid>, StoreError> {
    // Postgres text cannot hold NUL; one stray byte in a script's log
    // must not block the whole batch forever.
    let col = |f: fn(&InvocationRecord) -> String| {
        records.iter().map(|r| no_nul(f(r))).collect::<Vec<_>>()
    };
    let ids: Vec<Uuid> = records.iter().map(|r| r.id).collect();
    let versions: Vec<i32> = records.iter().map(|r| r.version as i32).collect();
    let http: Vec<Option<i32>> = records
        .iter()
        .map(|r| r.http_status.map(i32::from))
        .collect();
    let started: Vec<_> = records.iter().map(|r| r.started_at).collect();
    let durations: Vec<i64> = records.iter().map(|r| r.duration_us as i64).collect();
    let errors: Vec<Option<String>> = records
        .iter()
        .map(|r| r.error.clone().map(no_nul))
        .collect();
    let traces: Vec<Uuid> = records.iter().map(|r| r.trace_id).collect();
    let attempts: Vec<i32> = records.iter().map(|r| r.attempt as i32).collect();
    let parents: Vec<Option<Uuid>> = records.iter().map(|r| r.parent_id).collect();
    // Stored as JSON bytes, so a body holding NUL round-trips exactly.
    let responses: Vec<Option<Vec<u8>>> = records
        .iter()
        .map(|r| r.response.as_ref().map(crate::json_bytes::encode))
        .collect();
    let public: Vec<bool> = records.iter().map(|r| r.public).collect();
    // What a newer report of an invocation overwrites: anything but a
    // committed (`ok`) record, and only with the same or a later attempt
    // (batched failure records may arrive after a later attempt's commit).
    let written: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO invocations (id, script, version, trigger, status, http_status,
                                  started_at, duration_us, log, error, executor, trace_id,
                                  attempt, parent_id, response, public)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::int[], $4::text[], $5::text[],
                              $6::int[], $7::timestamptz[], $8::bigint[], $9::text[],
                              $10::text[], $11::text[], $12::uuid[], $13::int[], $14::uuid[],
                              $15::bytea[], $16::bool[])
         ON CONFLICT (id) DO UPDATE SET
             script = EXCLUDED.script, version = EXCLUDED.version, trigger = EXCLUDED.trigger,
             status = EXCLUDED.status, http_status = EXCLUDED.http_status,
             started_at = EXCLUDED.started_at, duration_us = EXCLUDED.duration_us,
             log = EXCLUDED.log, error = EXCLUDED.error, executor = EXCLUDED.executor,
             trace_id = EXCLUDED.trace_id, attempt = EXCLUDED.attempt,
             parent_id = COALESCE(EXCLUDED.parent_id, invocations.parent_id),
             response = EXCLUDED.response, public = invocations.public OR EXCLUDED.public
         WHERE invocations.status <> 'ok' AND invocations.attempt <= EXCLUDED.attempt
         RETURNING id",
    )
    .bind(ids)
    .bind(col(|r| r.script.clone()))
    .bind(versions)
    .bind(col(|r| r.trigger.as_str().to_owned()))
    .bind(col(|r| r.status.as_str().to_owned()))
    .bind(http)
    .bind(started)
    .bind(durations)
    .bind(col(|r| r.log.clone()))
    .bind(errors)
    .bind(col(|r| r.executor.clone()))
    .bind(traces)
    .bind(attempts)
    .bind(parents)
    .bind(responses)
    .bind(public)
    .fetch_all(conn)
    .await?;
    Ok(written)
}
