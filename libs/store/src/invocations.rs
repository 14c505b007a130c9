//! The invocation log. Records arrive in batches and are inserted with one
//! statement per batch; a record seen twice (redelivery) is ignored.

use picloud_core::{InvocationRecord, InvocationStatus, Trigger};
use sqlx::Row;
use sqlx::postgres::PgRow;
use uuid::Uuid;

use crate::{Store, StoreError};

#[derive(Debug, Clone, Default)]
pub struct InvocationFilter {
    pub script: Option<String>,
    pub status: Option<InvocationStatus>,
    pub limit: u32,
}

const COLS: &str = "id, script, version, trigger, status, http_status, started_at, duration_us, log, error, executor, trace_id";

fn record(r: &PgRow) -> Result<InvocationRecord, StoreError> {
    let trigger: String = r.try_get("trigger")?;
    let status: String = r.try_get("status")?;
    Ok(InvocationRecord {
        id: r.try_get("id")?,
        script: r.try_get("script")?,
        version: r.try_get::<i32, _>("version")? as u32,
        trigger: Trigger::parse(&trigger)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown trigger {trigger:?}")))?,
        status: InvocationStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown status {status:?}")))?,
        http_status: r
            .try_get::<Option<i32>, _>("http_status")?
            .map(|s| s as u16),
        started_at: r.try_get("started_at")?,
        duration_us: r.try_get::<i64, _>("duration_us")? as u64,
        log: r.try_get("log")?,
        error: r.try_get("error")?,
        executor: r.try_get("executor")?,
        trace_id: r.try_get("trace_id")?,
    })
}

fn no_nul(s: String) -> String {
    if s.contains('\0') {
        s.replace('\0', "\u{FFFD}")
    } else {
        s
    }
}

impl Store {
    pub async fn insert_invocations(
        &self,
        records: &[InvocationRecord],
    ) -> Result<u64, StoreError> {
        if records.is_empty() {
            return Ok(0);
        }
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
        let done = sqlx::query(
            "INSERT INTO invocations (id, script, version, trigger, status, http_status,
                                      started_at, duration_us, log, error, executor, trace_id)
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::int[], $4::text[], $5::text[],
                                  $6::int[], $7::timestamptz[], $8::bigint[], $9::text[],
                                  $10::text[], $11::text[], $12::uuid[])
             ON CONFLICT (id) DO NOTHING",
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
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Newest first.
    pub async fn list_invocations(
        &self,
        filter: &InvocationFilter,
    ) -> Result<Vec<InvocationRecord>, StoreError> {
        sqlx::query(&format!(
            "SELECT {COLS} FROM invocations
             WHERE ($1::text IS NULL OR script = $1) AND ($2::text IS NULL OR status = $2)
             ORDER BY started_at DESC, id LIMIT $3"
        ))
        .bind(filter.script.as_deref())
        .bind(filter.status.map(|s| s.as_str()))
        .bind(i64::from(filter.limit))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(record)
        .collect()
    }

    pub async fn get_invocation(&self, id: Uuid) -> Result<Option<InvocationRecord>, StoreError> {
        sqlx::query(&format!("SELECT {COLS} FROM invocations WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(record)
            .transpose()
    }
}
