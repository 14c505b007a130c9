//! Per-script kv state: reads, and the read check and writes a commit
//! ([`crate::commit`]) runs under its locks.

use picloud_core::effects::MAX_KV_LIST;
use picloud_core::{Effects, KvEntry, KvVersion};
use sqlx::{PgConnection, Row};

use crate::{Store, StoreError};

impl Store {
    pub async fn kv_get(&self, script: &str, key: &str) -> Result<Option<KvEntry>, StoreError> {
        let row = sqlx::query("SELECT value, version FROM kv WHERE script = $1 AND key = $2")
            .bind(script)
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            Ok(KvEntry {
                value: crate::json_bytes::decode(r.try_get("value")?, "kv value")?,
                version: r.try_get("version")?,
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

    /// The whole kv of `script` (tests and the admin view), in key order.
    pub async fn kv_dump(
        &self,
        script: &str,
    ) -> Result<Vec<(String, serde_json::Value)>, StoreError> {
        sqlx::query("SELECT key, value FROM kv WHERE script = $1 ORDER BY key")
            .bind(script)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| {
                let value = crate::json_bytes::decode(r.try_get("value")?, "kv value")?;
                Ok((r.try_get("key")?, value))
            })
            .collect()
    }
}

async fn list(
    conn: &mut PgConnection,
    script: &str,
    prefix: &str,
) -> Result<Vec<(String, KvVersion)>, StoreError> {
    // `key` has the C collation, so byte order and `starts_with` agree.
    sqlx::query(
        "SELECT key, version FROM kv WHERE script = $1 AND starts_with(key, $2)
         ORDER BY key LIMIT $3",
    )
    .bind(script)
    .bind(prefix)
    .bind(MAX_KV_LIST as i64)
    .fetch_all(conn)
    .await?
    .iter()
    .map(|r| Ok((r.try_get("key")?, r.try_get("version")?)))
    .collect()
}

pub(crate) async fn reads_current(
    conn: &mut PgConnection,
    script: &str,
    effects: &Effects,
) -> Result<bool, StoreError> {
    if !effects.reads.is_empty() {
        let keys: Vec<&str> = effects.reads.keys().map(String::as_str).collect();
        let now: std::collections::HashMap<String, KvVersion> =
            sqlx::query("SELECT key, version FROM kv WHERE script = $1 AND key = ANY($2)")
                .bind(script)
                .bind(&keys)
                .fetch_all(&mut *conn)
                .await?
                .iter()
                .map(|r| Ok((r.try_get("key")?, r.try_get("version")?)))
                .collect::<Result<_, StoreError>>()?;
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

pub(crate) async fn write(
    conn: &mut PgConnection,
    script: &str,
    effects: &Effects,
) -> Result<(), StoreError> {
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
