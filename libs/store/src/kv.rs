//! Per-script kv state and the commit that applies an invocation's effects.
//!
//! A commit is one transaction: the invocation record (whose row is the
//! "already applied" marker: a record stored as `ok` is never overwritten),
//! the check that every key and prefix the invocation read is unchanged,
//! the writes, and the outbox rows of its emits. Commits of one script's kv
//! are serialised by a transaction-scoped advisory lock on the script, which
//! makes the read check and the writes atomic (absent keys and listed
//! prefixes included, which row locks alone would not cover).

use picloud_core::effects::MAX_KV_LIST;
use picloud_core::{Effects, InvocationRecord, KvEntry, KvVersion};
use sqlx::PgConnection;

use crate::outbox::{self, OutboxRow};
use crate::{Store, StoreError};

/// What a commit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    Applied,
    /// The invocation was committed before: nothing was changed.
    AlreadyApplied,
    /// A key it read changed since: nothing was changed; re-run it.
    Conflict,
}

impl Store {
    pub async fn kv_get(&self, script: &str, key: &str) -> Result<Option<KvEntry>, StoreError> {
        let row: Option<(Vec<u8>, KvVersion)> =
            sqlx::query_as("SELECT value, version FROM kv WHERE script = $1 AND key = $2")
                .bind(script)
                .bind(key)
                .fetch_optional(&self.pool)
                .await?;
        row.map(|(value, version)| {
            Ok(KvEntry {
                value: crate::json_bytes::decode(value, "kv value")?,
                version,
            })
        })
        .transpose()
    }

    /// Keys starting with `prefix`, in order, with their versions (at most
    /// [`MAX_KV_LIST`]).
    pub async fn kv_list(
        &self,
        script: &str,
        prefix: &str,
    ) -> Result<Vec<(String, KvVersion)>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        list(&mut conn, script, prefix).await
    }

    /// Applies a successful invocation: its record, kv writes and `outbox`
    /// rows (its emits), if what it read is still current.
    pub async fn commit(
        &self,
        record: &InvocationRecord,
        effects: &Effects,
        outbox_rows: &[OutboxRow],
    ) -> Result<Committed, StoreError> {
        let mut tx = self.pool.begin().await?;
        if !Store::upsert_one(&mut tx, record).await? {
            return Ok(Committed::AlreadyApplied);
        }
        let touches_kv =
            !(effects.reads.is_empty() && effects.lists.is_empty() && effects.writes.is_empty());
        if touches_kv {
            sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('picloud.kv.' || $1, 0))")
                .bind(&record.script)
                .execute(&mut *tx)
                .await?;
            if !reads_current(&mut tx, &record.script, effects).await? {
                return Ok(Committed::Conflict);
            }
            write(&mut tx, &record.script, effects).await?;
        }
        outbox::insert(&mut tx, outbox_rows).await?;
        tx.commit().await?;
        Ok(Committed::Applied)
    }

    /// The whole kv of `script`, in key order.
    pub async fn kv_dump(
        &self,
        script: &str,
    ) -> Result<Vec<(String, serde_json::Value)>, StoreError> {
        sqlx::query_as::<_, (String, Vec<u8>)>(
            "SELECT key, value FROM kv WHERE script = $1 ORDER BY key",
        )
        .bind(script)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|(key, value)| Ok((key, crate::json_bytes::decode(value, "kv value")?)))
        .collect()
    }
}

async fn list(
    conn: &mut PgConnection,
    script: &str,
    prefix: &str,
) -> Result<Vec<(String, KvVersion)>, StoreError> {
    // `key` has the C collation, so byte order and `starts_with` agree.
    Ok(sqlx::query_as(
        "SELECT key, version FROM kv WHERE script = $1 AND starts_with(key, $2)
         ORDER BY key LIMIT $3",
    )
    .bind(script)
    .bind(prefix)
    .bind(MAX_KV_LIST as i64)
    .fetch_all(conn)
    .await?)
}

async fn reads_current(
    conn: &mut PgConnection,
    script: &str,
    effects: &Effects,
) -> Result<bool, StoreError> {
    if !effects.reads.is_empty() {
        let keys: Vec<&str> = effects.reads.keys().map(String::as_str).collect();
        let now: std::collections::HashMap<String, KvVersion> =
            sqlx::query_as::<_, (String, KvVersion)>(
                "SELECT key, version FROM kv WHERE script = $1 AND key = ANY($2)",
            )
            .bind(script)
            .bind(&keys)
            .fetch_all(&mut *conn)
            .await?
            .into_iter()
            .collect();
        let changed = effects
            .reads
            .iter()
            .any(|(k, seen)| now.get(k).copied().unwrap_or(0) != *seen);
        if changed {
            return Ok(false);
        }
    }
    for l in &effects.lists {
        if list(conn, script, &l.prefix).await? != l.entries {
            return Ok(false);
        }
    }
    Ok(true)
}

async fn write(conn: &mut PgConnection, script: &str, effects: &Effects) -> Result<(), StoreError> {
    let (mut set_keys, mut set_values, mut deleted) = (Vec::new(), Vec::new(), Vec::new());
    for (k, v) in &effects.writes {
        match v {
            Some(v) => {
                set_keys.push(k.as_str());
                set_values.push(crate::json_bytes::encode(v));
            }
            None => deleted.push(k.as_str()),
        }
    }
    if !set_keys.is_empty() {
        sqlx::query(
            "INSERT INTO kv (script, key, value, version)
             SELECT $1, k, v, nextval('kv_version') FROM UNNEST($2::text[], $3::bytea[]) AS t(k, v)
             ON CONFLICT (script, key) DO UPDATE
               SET value = EXCLUDED.value, version = EXCLUDED.version, updated_at = now()",
        )
        .bind(script)
        .bind(&set_keys)
        .bind(&set_values)
        .execute(&mut *conn)
        .await?;
    }
    if !deleted.is_empty() {
        sqlx::query("DELETE FROM kv WHERE script = $1 AND key = ANY($2)")
            .bind(script)
            .bind(&deleted)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}
