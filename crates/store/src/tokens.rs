//! API tokens, stored only as hashes.

use crate::{time, Store, StoreError};
use sqlx::Row;

/// A token row (the secret itself is never stored).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenRecord {
    pub id: String,
    pub role: String,
    pub project: String,
}

impl Store {
    /// Stores a token's hash; idempotent for the same id.
    pub async fn insert_token(
        &self,
        id: &str,
        hash: &str,
        role: &str,
        project: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO tokens (id, hash, role, project, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id)
        .bind(hash)
        .bind(role)
        .bind(project)
        .bind(time::now())
        .execute(&self.pool)
        .await
        .map_err(|e| StoreError::unique_or(e, || format!("token {id} exists")))?;
        Ok(())
    }

    /// Finds the token with this hash.
    pub async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>, StoreError> {
        let row = sqlx::query("SELECT id, role, project FROM tokens WHERE hash = $1")
            .bind(hash)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            Ok(TokenRecord {
                id: r.try_get("id")?,
                role: r.try_get("role")?,
                project: r.try_get("project")?,
            })
        })
        .transpose()
    }

    /// Whether a token with this id exists.
    pub async fn token_exists(&self, id: &str) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT id FROM tokens WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    /// Replaces the hash of a token (used when the local admin token file was lost).
    pub async fn replace_token_hash(&self, id: &str, hash: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE tokens SET hash = $1 WHERE id = $2")
            .bind(hash)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
