//! Placement groups and their members (instances whose `placement_group` names the group).

use crate::instances::parse_uuid;
use crate::page::{Page, PageRequest, BY_PROJECT_AND_NAME};
use crate::Scope;
use crate::{time, Store, StoreError};
use chrono::{DateTime, Utc};
use nimbus_api::PlacementPolicy;
use sqlx::Row;
use uuid::Uuid;

/// A placement group row.
#[derive(Debug, Clone, PartialEq)]
pub struct PlacementGroupRecord {
    pub id: Uuid,
    pub project: String,
    pub name: String,
    pub policy: PlacementPolicy,
    pub created_at: DateTime<Utc>,
}

/// A member of a placement group.
#[derive(Debug, Clone, PartialEq)]
pub struct PlacementMember {
    pub id: Uuid,
    pub name: String,
    pub host: Option<String>,
    /// The operation acting on it (e.g. a migration holding room on a target).
    pub operation_id: Option<Uuid>,
}

fn from_row(r: &sqlx::any::AnyRow) -> Result<PlacementGroupRecord, StoreError> {
    let policy: String = r.try_get("policy")?;
    Ok(PlacementGroupRecord {
        id: parse_uuid(&r.try_get::<String, _>("id")?)?,
        project: r.try_get("project")?,
        name: r.try_get("name")?,
        policy: PlacementPolicy::parse(&policy)
            .ok_or_else(|| StoreError::Corrupt(format!("placement policy {policy:?}")))?,
        created_at: time::parse(&r.try_get::<String, _>("created_at")?)?,
    })
}

impl Store {
    /// Creates a placement group; a name taken in the project is a conflict.
    pub async fn insert_placement_group(
        &self,
        project: &str,
        name: &str,
        policy: PlacementPolicy,
    ) -> Result<PlacementGroupRecord, StoreError> {
        let id = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO placement_groups (id, project, name, policy, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id.to_string())
        .bind(project)
        .bind(name)
        .bind(policy.as_str())
        .bind(time::now())
        .execute(&self.pool)
        .await
        .map_err(|e| {
            StoreError::unique_or(e, || {
                format!("a placement group named {name:?} already exists in project {project:?}")
            })
        })?;
        self.get_placement_group_by_id(id).await
    }

    /// The group `name` of `project`.
    pub async fn get_placement_group(
        &self,
        project: &str,
        name: &str,
    ) -> Result<PlacementGroupRecord, StoreError> {
        let row = sqlx::query("SELECT * FROM placement_groups WHERE project = $1 AND name = $2")
            .bind(project)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::not_found("placement group", name))?;
        from_row(&row)
    }

    /// The group with this id.
    pub async fn get_placement_group_by_id(
        &self,
        id: Uuid,
    ) -> Result<PlacementGroupRecord, StoreError> {
        let row = sqlx::query("SELECT * FROM placement_groups WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::not_found("placement group", id.to_string()))?;
        from_row(&row)
    }

    /// Groups of a project (all projects when `None`), by name.
    pub async fn list_placement_groups(
        &self,
        project: Option<&str>,
    ) -> Result<Vec<PlacementGroupRecord>, StoreError> {
        let rows = match project {
            Some(p) => {
                sqlx::query("SELECT * FROM placement_groups WHERE project = $1 ORDER BY name")
                    .bind(p)
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                sqlx::query("SELECT * FROM placement_groups ORDER BY project, name")
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.iter().map(from_row).collect()
    }

    /// One page of the placement groups `scope` sees, by project and name.
    pub async fn list_placement_groups_page(
        &self,
        scope: &Scope,
        page: &PageRequest,
    ) -> Result<Page<PlacementGroupRecord>, StoreError> {
        let rows = BY_PROJECT_AND_NAME
            .fetch_in(
                &self.pool,
                page,
                "SELECT * FROM placement_groups",
                scope,
                "project",
            )
            .await?;
        rows.try_map(from_row)
    }

    /// The instances of a group, by name.
    pub async fn placement_group_members(
        &self,
        id: Uuid,
    ) -> Result<Vec<PlacementMember>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, name, host, operation_id FROM instances WHERE placement_group = $1 \
             ORDER BY name",
        )
        .bind(id.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(PlacementMember {
                    id: parse_uuid(&r.try_get::<String, _>("id")?)?,
                    name: r.try_get("name")?,
                    host: r.try_get("host")?,
                    operation_id: r
                        .try_get::<Option<String>, _>("operation_id")?
                        .as_deref()
                        .map(parse_uuid)
                        .transpose()?,
                })
            })
            .collect()
    }

    /// Deletes a group that has no members (a conflict naming them otherwise).
    pub async fn delete_placement_group(&self, id: Uuid) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let members: Vec<String> =
            sqlx::query("SELECT name FROM instances WHERE placement_group = $1 ORDER BY name")
                .bind(id.to_string())
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| r.try_get::<String, _>("name"))
                .collect::<Result<_, _>>()?;
        if !members.is_empty() {
            return Err(StoreError::Conflict(format!(
                "the placement group still has members ({}): delete them first",
                members.join(", ")
            )));
        }
        sqlx::query("DELETE FROM placement_groups WHERE id = $1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}
