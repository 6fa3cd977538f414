//! API tokens, stored only as hashes, with an optional expiry and a revocation time.

use crate::page::{Page, PageRequest, OLDEST_FIRST};
use crate::{time, Scope, Store, StoreError};
use chrono::{DateTime, Utc};
use sqlx::Row;

/// A token row (the secret itself is never stored).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenRecord {
    pub id: String,
    pub name: Option<String>,
    pub role: String,
    pub project: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl TokenRecord {
    /// Whether the token may be used at `now`.
    pub fn is_valid_at(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|t| now < t)
    }
}

/// A token to store.
#[derive(Debug, Clone)]
pub struct NewToken<'a> {
    pub id: &'a str,
    pub name: Option<&'a str>,
    /// SHA-256 of the secret.
    pub hash: &'a str,
    pub role: &'a str,
    pub project: &'a str,
    pub expires_at: Option<DateTime<Utc>>,
}

fn from_row(r: &sqlx::any::AnyRow) -> Result<TokenRecord, StoreError> {
    Ok(TokenRecord {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        role: r.try_get("role")?,
        project: r.try_get("project")?,
        created_at: time::parse(&r.try_get::<String, _>("created_at")?)?,
        expires_at: time::parse_opt(r.try_get("expires_at")?)?,
        revoked_at: time::parse_opt(r.try_get("revoked_at")?)?,
    })
}

impl Store {
    /// Stores a token's hash.
    pub async fn insert_token(&self, t: &NewToken<'_>) -> Result<TokenRecord, StoreError> {
        sqlx::query(
            "INSERT INTO tokens (id, hash, role, project, created_at, name, expires_at, revoked_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, NULL)",
        )
        .bind(t.id)
        .bind(t.hash)
        .bind(t.role)
        .bind(t.project)
        .bind(time::now())
        .bind(t.name.map(str::to_string))
        .bind(t.expires_at.map(time::to_text))
        .execute(&self.pool)
        .await
        .map_err(|e| StoreError::unique_or(e, || format!("token {} exists", t.id)))?;
        self.get_token(&Scope::All, t.id).await
    }

    /// Finds the token with this hash (valid or not: the caller checks).
    pub async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM tokens WHERE hash = $1")
            .bind(hash)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// A token `scope` sees, by id.
    pub async fn get_token(&self, scope: &Scope, id: &str) -> Result<TokenRecord, StoreError> {
        let sql = format!(
            "SELECT * FROM tokens WHERE id = $1 AND {}",
            scope.condition("project", 2)
        );
        let row = scope
            .bind(sqlx::query(&sql).bind(id))
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::not_found("token", id))?;
        from_row(&row)
    }

    /// Tokens `scope` sees, oldest first.
    pub async fn list_tokens(&self, scope: &Scope) -> Result<Vec<TokenRecord>, StoreError> {
        let sql = format!(
            "SELECT * FROM tokens WHERE {} ORDER BY created_at, id",
            scope.condition("project", 1)
        );
        let rows = scope.bind(sqlx::query(&sql)).fetch_all(&self.pool).await?;
        rows.iter().map(from_row).collect()
    }

    /// One page of the tokens `scope` sees, oldest first.
    pub async fn list_tokens_page(
        &self,
        scope: &Scope,
        page: &PageRequest,
    ) -> Result<Page<TokenRecord>, StoreError> {
        let rows = OLDEST_FIRST
            .fetch_in(&self.pool, page, "SELECT * FROM tokens", scope, "project")
            .await?;
        rows.try_map(from_row)
    }

    /// Revokes a token at once (every later request with it is refused); revoking twice
    /// keeps the first time.
    pub async fn revoke_token(&self, scope: &Scope, id: &str) -> Result<TokenRecord, StoreError> {
        let sql = format!(
            "UPDATE tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL AND {}",
            scope.condition("project", 3)
        );
        scope
            .bind(sqlx::query(&sql).bind(time::now()).bind(id))
            .execute(&self.pool)
            .await?;
        self.get_token(scope, id).await
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
