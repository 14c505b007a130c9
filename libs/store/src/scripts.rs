//! Scripts and versions. A deploy adds a version and makes it active in one
//! transaction; versions are never changed afterwards.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use picloud_core::Limits;
use sqlx::Row;
use sqlx::postgres::PgRow;

use crate::{Store, StoreError};

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

fn script_row(r: &PgRow) -> Result<ScriptRow, StoreError> {
    Ok(ScriptRow {
        name: r.try_get("name")?,
        active_version: r.try_get::<i32, _>("active_version")? as u32,
        latest_version: r.try_get::<i32, _>("latest_version")? as u32,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        routes: routes_of(r)?,
    })
}

fn version_row(r: &PgRow) -> Result<VersionRow, StoreError> {
    let limits: serde_json::Value = r.try_get("limits")?;
    let modules: serde_json::Value = r.try_get("modules")?;
    Ok(VersionRow {
        script: r.try_get("script")?,
        version: r.try_get::<i32, _>("version")? as u32,
        source: r.try_get("source")?,
        sha256: r.try_get("sha256")?,
        limits: serde_json::from_value(limits).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        modules: serde_json::from_value(modules).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        keep_credentials: r.try_get("keep_credentials")?,
        routes: routes_of(r)?,
        created_at: r.try_get("created_at")?,
    })
}

fn routes_of(r: &PgRow) -> Result<Vec<String>, StoreError> {
    let routes: Option<serde_json::Value> = r.try_get("routes")?;
    routes
        .map(serde_json::from_value)
        .transpose()
        .map(Option::unwrap_or_default)
        .map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// A script with its active version's routes (`s` scripts, `v` versions).
const SCRIPT_FROM: &str =
    "SELECT s.name, s.active_version, s.latest_version, s.created_at, s.updated_at, v.routes
     FROM scripts s LEFT JOIN script_versions v
       ON v.script = s.name AND v.version = s.active_version";
const VERSION_COLS: &str =
    "script, version, source, sha256, limits, modules, keep_credentials, routes, created_at";

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
        .map(|(s, r)| serde_json::from_value(r).map(|r| (s, r)))
        .collect::<Result<_, _>>()
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
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
        let limits =
            serde_json::to_value(limits).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let row = sqlx::query(&format!(
            "INSERT INTO script_versions (script, version, source, sha256, limits, modules, keep_credentials, routes)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {VERSION_COLS}"
        ))
        .bind(name)
        .bind(version)
        .bind(source)
        .bind(sha256)
        .bind(limits)
        .bind(serde_json::to_value(modules).map_err(|e| StoreError::Corrupt(e.to_string()))?)
        .bind(keep_credentials)
        .bind(serde_json::to_value(routes).map_err(|e| StoreError::Corrupt(e.to_string()))?)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        version_row(&row)
    }

    pub async fn list_scripts(&self) -> Result<Vec<ScriptRow>, StoreError> {
        sqlx::query(&format!(
            "{SCRIPT_FROM} WHERE NOT s.deleted ORDER BY s.name"
        ))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(script_row)
        .collect()
    }

    pub async fn get_script(&self, name: &str) -> Result<Option<ScriptRow>, StoreError> {
        sqlx::query(&format!(
            "{SCRIPT_FROM} WHERE s.name = $1 AND NOT s.deleted"
        ))
        .bind(name)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(script_row)
        .transpose()
    }

    /// Deletes a script and all its versions; returns the version numbers
    /// that existed, or `None` when there was no such script.
    pub async fn delete_script(&self, name: &str) -> Result<Option<Vec<u32>>, StoreError> {
        let mut tx = self.pool.begin().await?;
        // Lock the script first, so a concurrent deploy cannot add a version
        // between listing and deleting.
        let found = sqlx::query("SELECT 1 FROM scripts WHERE name = $1 AND NOT deleted FOR UPDATE")
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
        Ok(Some(versions.into_iter().map(|v| v as u32).collect()))
    }

    /// All versions of a script, newest first.
    pub async fn list_versions(&self, name: &str) -> Result<Vec<VersionRow>, StoreError> {
        sqlx::query(&format!(
            "SELECT {VERSION_COLS} FROM script_versions WHERE script = $1 ORDER BY version DESC"
        ))
        .bind(name)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(version_row)
        .collect()
    }

    pub async fn get_version(
        &self,
        name: &str,
        version: u32,
    ) -> Result<Option<VersionRow>, StoreError> {
        sqlx::query(&format!(
            "SELECT {VERSION_COLS} FROM script_versions WHERE script = $1 AND version = $2"
        ))
        .bind(name)
        .bind(version as i32)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(version_row)
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
            let routes: Vec<String> =
                serde_json::from_value(routes).map_err(|e| StoreError::Corrupt(e.to_string()))?;
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
        let row = sqlx::query(&format!(
            "SELECT {VERSION_COLS} FROM script_versions WHERE script = $1 AND version = $2"
        ))
        .bind(name)
        .bind(version as i32)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        version_row(&row).map(Some)
    }

    /// The active version of one script, `None` when it does not exist.
    pub async fn active_version(&self, name: &str) -> Result<Option<VersionRow>, StoreError> {
        sqlx::query(
            "SELECT v.script, v.version, v.source, v.sha256, v.limits, v.modules, v.keep_credentials, v.routes, v.created_at
             FROM scripts s JOIN script_versions v
               ON v.script = s.name AND v.version = s.active_version
             WHERE s.name = $1 AND NOT s.deleted",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(version_row)
        .transpose()
    }

    /// The active version of every script (to rebuild the bus's route table).
    pub async fn active_versions(&self) -> Result<Vec<VersionRow>, StoreError> {
        sqlx::query(
            "SELECT v.script, v.version, v.source, v.sha256, v.limits, v.modules, v.keep_credentials, v.routes, v.created_at
             FROM scripts s JOIN script_versions v
               ON v.script = s.name AND v.version = s.active_version
             WHERE NOT s.deleted
             ORDER BY s.name",
        )
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(version_row)
        .collect()
    }
}
