//! Shared modules: versioned like scripts, never changed once stored.

use chrono::{DateTime, Utc};

use crate::{Store, StoreError, rows};

#[derive(Debug, Clone, PartialEq)]
pub struct ModuleRow {
    pub name: String,
    pub latest_version: u32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModuleVersionRow {
    pub module: String,
    pub version: u32,
    pub source: String,
    pub sha256: String,
    pub imports: Vec<String>,
    pub created_at: DateTime<Utc>,
}

/// A `modules` row.
#[derive(sqlx::FromRow)]
struct ModuleRecord {
    name: String,
    latest_version: i32,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl TryFrom<ModuleRecord> for ModuleRow {
    type Error = StoreError;

    fn try_from(r: ModuleRecord) -> Result<Self, StoreError> {
        Ok(ModuleRow {
            name: r.name,
            latest_version: rows::int(r.latest_version, "module latest_version")?,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

/// A `module_versions` row.
#[derive(sqlx::FromRow)]
struct VersionRecord {
    module: String,
    version: i32,
    source: String,
    sha256: String,
    imports: serde_json::Value,
    created_at: DateTime<Utc>,
}

impl TryFrom<VersionRecord> for ModuleVersionRow {
    type Error = StoreError;

    fn try_from(r: VersionRecord) -> Result<Self, StoreError> {
        Ok(ModuleVersionRow {
            module: r.module,
            version: rows::int(r.version, "module version")?,
            source: r.source,
            sha256: r.sha256,
            imports: rows::json(r.imports, "module version imports")?,
            created_at: r.created_at,
        })
    }
}

/// The columns of a [`VersionRecord`].
macro_rules! version_cols {
    () => {
        "module, version, source, sha256, imports, created_at"
    };
}

impl Store {
    /// Stores a new version of module `name` (creating it if needed).
    pub async fn create_module_version(
        &self,
        name: &str,
        source: &str,
        sha256: &str,
        imports: &[String],
    ) -> Result<ModuleVersionRow, StoreError> {
        let mut tx = self.pool.begin().await?;
        let version: i32 = sqlx::query_scalar(
            "INSERT INTO modules (name, latest_version) VALUES ($1, 1)
             ON CONFLICT (name) DO UPDATE
                SET latest_version = modules.latest_version + 1, updated_at = now()
             RETURNING latest_version",
        )
        .bind(name)
        .fetch_one(&mut *tx)
        .await?;
        let row: VersionRecord = sqlx::query_as(concat!(
            "INSERT INTO module_versions (module, version, source, sha256, imports)
             VALUES ($1, $2, $3, $4, $5) RETURNING ",
            version_cols!()
        ))
        .bind(name)
        .bind(version)
        .bind(source)
        .bind(sha256)
        .bind(rows::to_json(imports))
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        row.try_into()
    }

    pub async fn list_modules(&self) -> Result<Vec<ModuleRow>, StoreError> {
        sqlx::query_as::<_, ModuleRecord>(
            "SELECT name, latest_version, created_at, updated_at FROM modules ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(ModuleRow::try_from)
        .collect()
    }

    /// The newest version of a module.
    pub async fn latest_module_version(
        &self,
        name: &str,
    ) -> Result<Option<ModuleVersionRow>, StoreError> {
        sqlx::query_as::<_, VersionRecord>(concat!(
            "SELECT ",
            version_cols!(),
            " FROM module_versions
             WHERE module = $1 AND version = (SELECT latest_version FROM modules WHERE name = $1)"
        ))
        .bind(name)
        .fetch_optional(&self.pool)
        .await?
        .map(ModuleVersionRow::try_from)
        .transpose()
    }

    pub async fn module_version(
        &self,
        name: &str,
        version: u32,
    ) -> Result<Option<ModuleVersionRow>, StoreError> {
        sqlx::query_as::<_, VersionRecord>(concat!(
            "SELECT ",
            version_cols!(),
            " FROM module_versions WHERE module = $1 AND version = $2"
        ))
        .bind(name)
        .bind(version as i32)
        .fetch_optional(&self.pool)
        .await?
        .map(ModuleVersionRow::try_from)
        .transpose()
    }
}
