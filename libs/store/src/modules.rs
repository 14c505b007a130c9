//! Shared modules: versioned like scripts, never changed once stored.

use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::postgres::PgRow;

use crate::{Store, StoreError};

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

const VERSION_COLS: &str = "module, version, source, sha256, imports, created_at";

fn version_row(r: &PgRow) -> Result<ModuleVersionRow, StoreError> {
    let imports: serde_json::Value = r.try_get("imports")?;
    Ok(ModuleVersionRow {
        module: r.try_get("module")?,
        version: r.try_get::<i32, _>("version")? as u32,
        source: r.try_get("source")?,
        sha256: r.try_get("sha256")?,
        imports: serde_json::from_value(imports).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        created_at: r.try_get("created_at")?,
    })
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
        let imports =
            serde_json::to_value(imports).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let row = sqlx::query(&format!(
            "INSERT INTO module_versions (module, version, source, sha256, imports)
             VALUES ($1, $2, $3, $4, $5) RETURNING {VERSION_COLS}"
        ))
        .bind(name)
        .bind(version)
        .bind(source)
        .bind(sha256)
        .bind(imports)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        version_row(&row)
    }

    pub async fn list_modules(&self) -> Result<Vec<ModuleRow>, StoreError> {
        sqlx::query(
            "SELECT name, latest_version, created_at, updated_at FROM modules ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            Ok(ModuleRow {
                name: r.try_get("name")?,
                latest_version: r.try_get::<i32, _>("latest_version")? as u32,
                created_at: r.try_get("created_at")?,
                updated_at: r.try_get("updated_at")?,
            })
        })
        .collect()
    }

    /// The newest version of a module.
    pub async fn latest_module_version(
        &self,
        name: &str,
    ) -> Result<Option<ModuleVersionRow>, StoreError> {
        sqlx::query(&format!(
            "SELECT {VERSION_COLS} FROM module_versions v
             WHERE module = $1 AND version = (SELECT latest_version FROM modules WHERE name = $1)"
        ))
        .bind(name)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(version_row)
        .transpose()
    }

    pub async fn module_version(
        &self,
        name: &str,
        version: u32,
    ) -> Result<Option<ModuleVersionRow>, StoreError> {
        sqlx::query(&format!(
            "SELECT {VERSION_COLS} FROM module_versions WHERE module = $1 AND version = $2"
        ))
        .bind(name)
        .bind(version as i32)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(version_row)
        .transpose()
    }
}
