//! Projects: the tenants. Deleting one is refused while it owns instances; its tokens are
//! revoked and its quota removed with it.

use crate::locks::lock_project;
use crate::networks::{insert_network, next_vni};
use crate::page::{KeyColumn, Keyset, Page, PageRequest};
use crate::quotas::lock_quota;
use crate::secgroups::insert_default_group;
use crate::{time, NewNetwork, Store, StoreError};
use nimbus_api::{ProjectView, QuotaLimits};
use sqlx::Row;

fn from_row(r: &sqlx::any::AnyRow) -> Result<ProjectView, StoreError> {
    Ok(ProjectView {
        name: r.try_get("name")?,
        description: r.try_get("description")?,
        created_at: time::parse(&r.try_get::<String, _>("created_at")?)?,
    })
}

impl Store {
    /// Creates a project with its `default` network (`network`), in one transaction, then
    /// sets its initial quota.
    pub async fn create_project(
        &self,
        name: &str,
        description: Option<&str>,
        quota: &QuotaLimits,
        network: &NewNetwork,
    ) -> Result<ProjectView, StoreError> {
        let mut tx = self.begin().await?;
        sqlx::query("INSERT INTO projects (name, description, created_at) VALUES ($1, $2, $3)")
            .bind(name)
            .bind(description.map(str::to_string))
            .bind(time::now())
            .execute(&mut *tx)
            .await
            .map_err(|e| StoreError::unique_or(e, || format!("project {name:?} already exists")))?;
        let vni = next_vni(&mut tx).await?;
        insert_network(&mut tx, name, network, vni).await?;
        insert_default_group(&mut tx, name).await?;
        tx.commit().await?;
        self.set_quota(name, quota).await?;
        self.get_project(name).await
    }

    pub async fn get_project(&self, name: &str) -> Result<ProjectView, StoreError> {
        let row = sqlx::query("SELECT * FROM projects WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::not_found("project", name))?;
        from_row(&row)
    }

    /// Projects by name.
    pub async fn list_projects(&self) -> Result<Vec<ProjectView>, StoreError> {
        let rows = sqlx::query("SELECT * FROM projects ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(from_row).collect()
    }

    /// One page of the projects, by name.
    pub async fn list_projects_page(
        &self,
        page: &PageRequest,
    ) -> Result<Page<ProjectView>, StoreError> {
        const KEY: Keyset = Keyset::ascending(&[KeyColumn::text("name")]);
        let rows = KEY
            .fetch(&self.pool, page, "SELECT * FROM projects", "1 = 1", &[])
            .await?;
        rows.try_map(from_row)
    }

    /// Deletes a project that owns no instances; revokes its tokens and drops its quota.
    /// The quota row is locked first, so a create racing with the delete either commits
    /// before (and the delete is refused) or finds the project gone.
    pub async fn delete_project(&self, name: &str) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        lock_quota(&mut tx, name).await?;
        // The project row too: a create in a project without a quota row locks only this.
        lock_project(&mut tx, name).await?;
        let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM instances WHERE project = $1")
            .bind(name)
            .fetch_one(&mut *tx)
            .await?
            .try_get("n")?;
        if n > 0 {
            return Err(StoreError::Conflict(format!(
                "project {name} still owns {n} instance(s); delete them first \
                 (`nimbus instance list --project {name}`)"
            )));
        }
        let gone = sqlx::query("DELETE FROM projects WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        if gone.rows_affected() == 0 {
            return Err(StoreError::not_found("project", name));
        }
        for sql in [
            "DELETE FROM networks WHERE project = $1",
            "DELETE FROM secgroup_rules WHERE group_id IN \
             (SELECT id FROM secgroups WHERE project = $1)",
            "DELETE FROM secgroups WHERE project = $1",
        ] {
            sqlx::query(sql).bind(name).execute(&mut *tx).await?;
        }
        sqlx::query("DELETE FROM quotas WHERE project = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE tokens SET revoked_at = $1 WHERE project = $2 AND revoked_at IS NULL")
            .bind(time::now())
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}
