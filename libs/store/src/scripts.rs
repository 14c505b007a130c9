//! Scripts and versions. A deploy adds a version and makes it active in one
//! transaction; versions are never changed afterwards.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use picloud_core::Limits;

use crate::{Store, StoreError, rows};

#[derive(Debug, Clone, PartialEq)]
pub struct ScriptRow {
    pub name: String,
    pub active_version: u32,
    pub latest_version: u32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The active version's custom routes.
    pub routes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VersionRow {
    pub script: String,
    pub version: u32,
    pub source: String,
    pub sha256: String,
    pub limits: Limits,
    /// The module versions this version imports (its whole closure).
    pub modules: BTreeMap<String, u32>,
    /// Async jobs keep the caller's credential headers (`Authorization`,
    /// `Cookie`, `Proxy-Authorization`); off by default.
    pub keep_credentials: bool,
    /// Custom HTTP routes (`GET /users/:id`), normalised.
    pub routes: Vec<String>,
    pub created_at: DateTime<Utc>,
}

/// What a deploy stores (see [`Store::create_version_with`]).
#[derive(Debug, Clone, Copy)]
pub struct NewVersion<'a> {
    pub source: &'a str,
    pub sha256: &'a str,
    pub limits: &'a Limits,
    pub modules: &'a BTreeMap<String, u32>,
    pub keep_credentials: bool,
    /// Validated with `picloud_core::routes`; checked for conflicts here.
    pub routes: &'a [String],
}

/// A `scripts` row joined with its active version's routes.
#[derive(sqlx::FromRow)]
struct ScriptRecord {
    name: String,
    active_version: i32,
    latest_version: i32,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    /// NULL when the active version is missing (the join found none).
    routes: Option<serde_json::Value>,
}

impl TryFrom<ScriptRecord> for ScriptRow {
    type Error = StoreError;

    fn try_from(r: ScriptRecord) -> Result<Self, StoreError> {
        Ok(ScriptRow {
            name: r.name,
            active_version: rows::int(r.active_version, "script active_version")?,
            latest_version: rows::int(r.latest_version, "script latest_version")?,
            created_at: r.created_at,
            updated_at: r.updated_at,
            routes: routes_of(r.routes)?,
        })
    }
}

/// A `script_versions` row.
#[derive(sqlx::FromRow)]
struct VersionRecord {
    script: String,
    version: i32,
    source: String,
    sha256: String,
    limits: serde_json::Value,
    modules: serde_json::Value,
    keep_credentials: bool,
    routes: Option<serde_json::Value>,
    created_at: DateTime<Utc>,
}

impl TryFrom<VersionRecord> for VersionRow {
    type Error = StoreError;

    fn try_from(r: VersionRecord) -> Result<Self, StoreError> {
        Ok(VersionRow {
            script: r.script,
            version: rows::int(r.version, "script version")?,
            source: r.source,
            sha256: r.sha256,
            limits: rows::json(r.limits, "script version limits")?,
            modules: rows::json(r.modules, "script version modules")?,
            keep_credentials: r.keep_credentials,
            routes: routes_of(r.routes)?,
            created_at: r.created_at,
        })
    }
}

fn routes_of(routes: Option<serde_json::Value>) -> Result<Vec<String>, StoreError> {
    routes
        .map(|r| rows::json(r, "script version routes"))
        .transpose()
        .map(Option::unwrap_or_default)
}

/// A script with its active version's routes (`s` scripts, `v` versions).
macro_rules! script_from {
    () => {
        "SELECT s.name, s.active_version, s.latest_version, s.created_at, s.updated_at, v.routes
         FROM scripts s LEFT JOIN script_versions v
           ON v.script = s.name AND v.version = s.active_version"
    };
}

/// The columns of a [`VersionRecord`].
macro_rules! version_cols {
    () => {
        "script, version, source, sha256, limits, modules, keep_credentials, routes, created_at"
    };
}

/// Serialises every change of who holds which route (one lock for the
/// whole table: deploys with routes are rare next to invocations).
const ROUTES_LOCK: i64 = 0x7069_726f_7574_6573; // "piroutes" in ASCII

/// Refuses `routes` for `script` when another script's active version
/// holds an overlapping one. Takes the route lock until `tx` ends.
async fn check_routes(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    script: &str,
    routes: &[String],
) -> Result<(), StoreError> {
    if routes.is_empty() {
        return Ok(());
    }
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(ROUTES_LOCK)
        .execute(&mut **tx)
        .await?;
    let held: Vec<(String, serde_json::Value)> = sqlx::query_as(
        "SELECT v.script, v.routes FROM scripts s JOIN script_versions v
           ON v.script = s.name AND v.version = s.active_version
         WHERE NOT s.deleted AND s.name <> $1 AND v.routes <> '[]'::jsonb",
    )
    .bind(script)
    .fetch_all(&mut **tx)
    .await?;
    let held: Vec<(String, Vec<String>)> = held
        .into_iter()
        .map(|(s, r)| Ok((s, rows::json(r, "script version routes")?)))
        .collect::<Result<_, StoreError>>()?;
    picloud_core::routes::check_conflicts(
        held.iter().map(|(s, r)| (s.as_str(), r.as_slice())),
        script,
        routes,
    )
    .map_err(StoreError::RouteConflict)
}

impl Store {
    /// Stores a new version of `name` (creating the script if needed) and
    /// makes it the active one.
    pub async fn create_version(
        &self,
        name: &str,
        source: &str,
        sha256: &str,
        limits: &Limits,
        modules: &BTreeMap<String, u32>,
        keep_credentials: bool,
    ) -> Result<VersionRow, StoreError> {
        let new = NewVersion {
            source,
            sha256,
            limits,
            modules,
            keep_credentials,
            routes: &[],
        };
        self.create_version_with(name, new).await
    }

    /// Stores a new version with its routes and makes it active;
    /// [`StoreError::RouteConflict`] (and nothing stored) when a route
    /// overlaps one of another script.
    pub async fn create_version_with(
        &self,
        name: &str,
        new: NewVersion<'_>,
    ) -> Result<VersionRow, StoreError> {
        let NewVersion {
            source,
            sha256,
            limits,
            modules,
            keep_credentials,
            routes,
        } = new;
        let mut tx = self.pool.begin().await?;
        check_routes(&mut tx, name, routes).await?;
        // Take the row lock (creating the row if this is the first deploy)
        // so concurrent deploys of one script get consecutive numbers.
        let version: i32 = sqlx::query_scalar(
            "INSERT INTO scripts (name, active_version, latest_version) VALUES ($1, 1, 1)
             ON CONFLICT (name) DO UPDATE
                SET latest_version = scripts.latest_version + 1,
                    active_version = scripts.latest_version + 1,
                    deleted = false,
                    updated_at = now()
             RETURNING latest_version",
        )
        .bind(name)
        .fetch_one(&mut *tx)
        .await?;
        let row: VersionRecord = sqlx::query_as(concat!(
            "INSERT INTO script_versions (script, version, source, sha256, limits, modules, keep_credentials, routes)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING ",
            version_cols!()
        ))
        .bind(name)
        .bind(version)
        .bind(source)
        .bind(sha256)
        .bind(rows::to_json(limits))
        .bind(rows::to_json(modules))
        .bind(keep_credentials)
        .bind(rows::to_json(routes))
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        row.try_into()
    }

    pub async fn list_scripts(&self) -> Result<Vec<ScriptRow>, StoreError> {
        sqlx::query_as::<_, ScriptRecord>(concat!(
            script_from!(),
            " WHERE NOT s.deleted ORDER BY s.name"
        ))
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(ScriptRow::try_from)
        .collect()
    }

    pub async fn get_script(&self, name: &str) -> Result<Option<ScriptRow>, StoreError> {
        sqlx::query_as::<_, ScriptRecord>(concat!(
            script_from!(),
            " WHERE s.name = $1 AND NOT s.deleted"
        ))
        .bind(name)
        .fetch_optional(&self.pool)
        .await?
        .map(ScriptRow::try_from)
        .transpose()
    }

    /// Deletes a script and all its versions; returns the version numbers
    /// that existed, or `None` when there was no such script.
    pub async fn delete_script(&self, name: &str) -> Result<Option<Vec<u32>>, StoreError> {
        let mut tx = self.pool.begin().await?;
        // Lock the script first, so a concurrent deploy cannot add a version
        // between listing and deleting.
        let found: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM scripts WHERE name = $1 AND NOT deleted FOR UPDATE")
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?;
        if found.is_none() {
            return Ok(None);
        }
        let versions: Vec<i32> = sqlx::query_scalar(
            "SELECT version FROM script_versions WHERE script = $1 ORDER BY version",
        )
        .bind(name)
        .fetch_all(&mut *tx)
        .await?;
        // Keep the row as a tombstone (its version counter goes on).
        sqlx::query("DELETE FROM script_versions WHERE script = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE scripts SET deleted = true, updated_at = now() WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        versions
            .into_iter()
            .map(|v| rows::int(v, "script version"))
            .collect::<Result<_, _>>()
            .map(Some)
    }

    /// All versions of a script, newest first.
    pub async fn list_versions(&self, name: &str) -> Result<Vec<VersionRow>, StoreError> {
        sqlx::query_as::<_, VersionRecord>(concat!(
            "SELECT ",
            version_cols!(),
            " FROM script_versions WHERE script = $1 ORDER BY version DESC"
        ))
        .bind(name)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(VersionRow::try_from)
        .collect()
    }

    pub async fn get_version(
        &self,
        name: &str,
        version: u32,
    ) -> Result<Option<VersionRow>, StoreError> {
        sqlx::query_as::<_, VersionRecord>(concat!(
            "SELECT ",
            version_cols!(),
            " FROM script_versions WHERE script = $1 AND version = $2"
        ))
        .bind(name)
        .bind(version as i32)
        .fetch_optional(&self.pool)
        .await?
        .map(VersionRow::try_from)
        .transpose()
    }

    /// Makes an existing version the active one. `None` when the script or
    /// version does not exist; [`StoreError::RouteConflict`] when its routes
    /// overlap routes another script took since.
    pub async fn activate(
        &self,
        name: &str,
        version: u32,
    ) -> Result<Option<VersionRow>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let routes: Option<serde_json::Value> = sqlx::query_scalar(
            "SELECT routes FROM script_versions WHERE script = $1 AND version = $2",
        )
        .bind(name)
        .bind(version as i32)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(routes) = routes {
            let routes: Vec<String> = rows::json(routes, "script version routes")?;
            check_routes(&mut tx, name, &routes).await?;
        }
        let updated = sqlx::query(
            "UPDATE scripts SET active_version = $2, updated_at = now()
             WHERE name = $1 AND NOT deleted
               AND EXISTS (SELECT 1 FROM script_versions WHERE script = $1 AND version = $2)",
        )
        .bind(name)
        .bind(version as i32)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated == 0 {
            return Ok(None);
        }
        let row: VersionRecord = sqlx::query_as(concat!(
            "SELECT ",
            version_cols!(),
            " FROM script_versions WHERE script = $1 AND version = $2"
        ))
        .bind(name)
        .bind(version as i32)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        row.try_into().map(Some)
    }

    /// The active version of one script, `None` when it does not exist.
    pub async fn active_version(&self, name: &str) -> Result<Option<VersionRow>, StoreError> {
        sqlx::query_as::<_, VersionRecord>(
            "SELECT v.script, v.version, v.source, v.sha256, v.limits, v.modules, v.keep_credentials, v.routes, v.created_at
             FROM scripts s JOIN script_versions v
               ON v.script = s.name AND v.version = s.active_version
             WHERE s.name = $1 AND NOT s.deleted",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?
        .map(VersionRow::try_from)
        .transpose()
    }

    /// The active version of every script (to rebuild the bus's route table).
    pub async fn active_versions(&self) -> Result<Vec<VersionRow>, StoreError> {
        sqlx::query_as::<_, VersionRecord>(
            "SELECT v.script, v.version, v.source, v.sha256, v.limits, v.modules, v.keep_credentials, v.routes, v.created_at
             FROM scripts s JOIN script_versions v
               ON v.script = s.name AND v.version = s.active_version
             WHERE NOT s.deleted
             ORDER BY s.name",
        )
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(VersionRow::try_from)
        .collect()
    }
}
