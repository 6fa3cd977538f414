//! Keypairs of a project (public keys only), found by name within the project.

use crate::page::{Page, PageRequest, BY_PROJECT_AND_NAME};
use crate::{time, Scope, Store, StoreError};
use nimbus_api::KeypairView;
use sqlx::Row;

fn from_row(r: &sqlx::any::AnyRow) -> Result<KeypairView, StoreError> {
    Ok(KeypairView {
        name: r.try_get("name")?,
        public_key: r.try_get("public_key")?,
        fingerprint: r.try_get("fingerprint")?,
        created_at: time::parse(&r.try_get::<String, _>("created_at")?)?,
    })
}

impl Store {
    pub async fn create_keypair(
        &self,
        project: &str,
        name: &str,
        public_key: &str,
        fingerprint: &str,
    ) -> Result<KeypairView, StoreError> {
        sqlx::query(
            "INSERT INTO keypairs (project, name, public_key, fingerprint, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(project)
        .bind(name)
        .bind(public_key)
        .bind(fingerprint)
        .bind(time::now())
        .execute(&self.pool)
        .await
        .map_err(|e| StoreError::unique_or(e, || format!("keypair {name:?} already exists")))?;
        self.get_keypair(name, &Scope::project(project)).await
    }

    pub async fn get_keypair(&self, name: &str, scope: &Scope) -> Result<KeypairView, StoreError> {
        let sql = format!(
            "SELECT * FROM keypairs WHERE name = $1 AND {}",
            scope.condition("project", 2)
        );
        let row = scope
            .bind(sqlx::query(&sql).bind(name))
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::not_found("keypair", name))?;
        from_row(&row)
    }

    pub async fn list_keypairs(&self, scope: &Scope) -> Result<Vec<KeypairView>, StoreError> {
        let sql = format!(
            "SELECT * FROM keypairs WHERE {} ORDER BY name",
            scope.condition("project", 1)
        );
        let rows = scope.bind(sqlx::query(&sql)).fetch_all(&self.pool).await?;
        rows.iter().map(from_row).collect()
    }

    /// One page of the keypairs `scope` sees, by project and name.
    pub async fn list_keypairs_page(
        &self,
        scope: &Scope,
        page: &PageRequest,
    ) -> Result<Page<KeypairView>, StoreError> {
        let rows = BY_PROJECT_AND_NAME
            .fetch_in(&self.pool, page, "SELECT * FROM keypairs", scope, "project")
            .await?;
        rows.try_map(from_row)
    }

    /// Deletes a keypair; instances keep the key they were created with.
    pub async fn delete_keypair(&self, name: &str, scope: &Scope) -> Result<(), StoreError> {
        let sql = format!(
            "DELETE FROM keypairs WHERE name = $1 AND {}",
            scope.condition("project", 2)
        );
        let r = scope
            .bind(sqlx::query(&sql).bind(name))
            .execute(&self.pool)
            .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::not_found("keypair", name));
        }
        Ok(())
    }
}
