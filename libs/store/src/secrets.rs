//! Secrets: only ciphertext is stored; this crate never sees a key or a value.

use chrono::{DateTime, Utc};

use crate::{Store, StoreError};

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct SecretRow {
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A stored secret, still encrypted.
#[derive(sqlx::FromRow)]
pub struct SealedSecret {
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

impl Store {
    pub async fn put_secret(&self, name: &str, sealed: &SealedSecret) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO secrets (name, nonce, ciphertext) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE
                SET nonce = EXCLUDED.nonce, ciphertext = EXCLUDED.ciphertext, updated_at = now()",
        )
        .bind(name)
        .bind(&sealed.nonce)
        .bind(&sealed.ciphertext)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn get_secret(&self, name: &str) -> Result<Option<SealedSecret>, StoreError> {
        Ok(
            sqlx::query_as("SELECT nonce, ciphertext FROM secrets WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// `true` when it existed.
    pub async fn delete_secret(&self, name: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM secrets WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Names and timestamps only.
    pub async fn list_secrets(&self) -> Result<Vec<SecretRow>, StoreError> {
        Ok(
            sqlx::query_as("SELECT name, created_at, updated_at FROM secrets ORDER BY name")
                .fetch_all(&self.pool)
                .await?,
        )
    }
}
