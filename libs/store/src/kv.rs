//! Per-script kv state: reads, and the read check and writes a commit
//! ([`crate::commit`]) runs under its locks.

use picloud_core::effects::MAX_KV_LIST;
use picloud_core::{Effects, KvEntry, KvVersion};
use sqlx::PgConnection;

use crate::{Store, StoreError};

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

pub(crate) async fn reads_current(
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

/// The current versions of `keys` ((script, key); absent ones are left
/// out), in one statement.
pub(crate) async fn versions(
    conn: &mut PgConnection,
    keys: &[(&str, &str)],
) -> Result<Vec<(String, String, KvVersion)>, StoreError> {
    let (scripts, names): (Vec<&str>, Vec<&str>) = keys.iter().copied().unzip();
    Ok(sqlx::query_as(
        "SELECT kv.script, kv.key, kv.version
         FROM UNNEST($1::text[], $2::text[]) AS t(s, k)
         JOIN kv ON kv.script = t.s AND kv.key = t.k",
    )
    .bind(&scripts)
    .bind(&names)
    .fetch_all(conn)
    .await?)
}

/// Writes `script`'s effects' writes (see [`write_many`]) under `version`.
pub(crate) async fn write(
    conn: &mut PgConnection,
    script: &str,
    effects: &Effects,
    version: Option<KvVersion>,
) -> Result<(), StoreError> {
    let writes: Vec<KvWrite<'_>> = effects
        .writes
        .iter()
        .map(|(k, v)| (script, k.as_str(), v.as_ref(), version))
        .collect();
    write_many(conn, &writes).await
}

/// One kv write: (script, key, the new value or `None` to delete, the
/// version it gets or `None` for the sequence's next).
pub(crate) type KvWrite<'a> = (
    &'a str,
    &'a str,
    Option<&'a serde_json::Value>,
    Option<KvVersion>,
);

/// Applies `writes` (each key at most once), every value set under a new
/// version (its own, or the sequence's next), in two statements at most:
/// one upsert, one delete.
pub(crate) async fn write_many(
    conn: &mut PgConnection,
    writes: &[KvWrite<'_>],
) -> Result<(), StoreError> {
    let (mut set_scripts, mut set_keys, mut set_values, mut set_versions) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut del_scripts, mut del_keys) = (Vec::new(), Vec::new());
    for (script, key, value, version) in writes {
        match value {
            Some(v) => {
                set_scripts.push(*script);
                set_keys.push(*key);
                set_values.push(crate::json_bytes::encode(v));
                set_versions.push(*version);
            }
            None => {
                del_scripts.push(*script);
                del_keys.push(*key);
            }
        }
    }
    if !set_keys.is_empty() {
        sqlx::query(
            "INSERT INTO kv (script, key, value, version)
             SELECT s, k, v, COALESCE(n, nextval('kv_version'))
             FROM UNNEST($1::text[], $2::text[], $3::bytea[], $4::bigint[]) AS t(s, k, v, n)
             ON CONFLICT (script, key) DO UPDATE
               SET value = EXCLUDED.value, version = EXCLUDED.version, updated_at = now()",
        )
        .bind(&set_scripts)
        .bind(&set_keys)
        .bind(&set_values)
        .bind(&set_versions)
        .execute(&mut *conn)
        .await?;
    }
    if !del_keys.is_empty() {
        sqlx::query(
            "DELETE FROM kv WHERE (script, key) IN
               (SELECT s, k FROM UNNEST($1::text[], $2::text[]) AS t(s, k))",
        )
        .bind(&del_scripts)
        .bind(&del_keys)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}
