//! Scaling groups: their sizes and policy, and their members (instances whose `group_id`
//! names the group). Changes of a group's sizes are compare-and-swap on its `generation`,
//! and every decision is written together with the event that explains it, before anything
//! acts on it.

use crate::instances::{instance_from_row, parse_uuid};
use crate::operations::insert_operation;
use crate::page::{Page, PageRequest, BY_PROJECT_AND_NAME};
use crate::Scope;
use crate::{time, InstanceRecord, NewGroupEvent, NewOperation, Store, StoreError};
use chrono::{DateTime, Utc};
use nimbus_api::{PolicyKind, ScalingStep};
use sqlx::Row;
use uuid::Uuid;

/// A group is `active` (evaluated by the autoscaler) until its delete operation marks it
/// `deleting`.
pub const GROUP_ACTIVE: &str = "active";
/// The group's delete operation runs; the autoscaler leaves it alone.
pub const GROUP_DELETING: &str = "deleting";

/// A scaling group row.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupRecord {
    pub id: Uuid,
    pub project: String,
    pub name: String,
    pub flavor: String,
    pub image: String,
    pub min: u32,
    pub max: u32,
    pub desired: u32,
    pub target_cpu: u32,
    pub policy: PolicyKind,
    pub steps: Vec<ScalingStep>,
    pub window_secs: u32,
    pub cooldown_secs: u32,
    /// [`GROUP_ACTIVE`] or [`GROUP_DELETING`].
    pub state: String,
    pub replacements: u64,
    /// When the policy last changed `desired` (start of the cooldown).
    pub last_scaled_at: Option<DateTime<Utc>>,
    /// Bumped by every change (compare-and-swap token).
    pub generation: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A new group.
#[derive(Debug, Clone)]
pub struct NewGroup {
    pub id: Uuid,
    pub project: String,
    pub name: String,
    pub flavor: String,
    pub image: String,
    pub min: u32,
    pub max: u32,
    pub desired: u32,
    pub target_cpu: u32,
    pub policy: PolicyKind,
    pub steps: Vec<ScalingStep>,
    pub window_secs: u32,
    pub cooldown_secs: u32,
}

/// New sizes of a group (all of them, as the caller computed them from what it read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupSizes {
    pub min: u32,
    pub max: u32,
    pub desired: u32,
    pub target_cpu: u32,
    pub window_secs: u32,
    pub cooldown_secs: u32,
}

impl GroupRecord {
    pub fn sizes(&self) -> GroupSizes {
        GroupSizes {
            min: self.min,
            max: self.max,
            desired: self.desired,
            target_cpu: self.target_cpu,
            window_secs: self.window_secs,
            cooldown_secs: self.cooldown_secs,
        }
    }
}

fn group_from_row(r: &sqlx::any::AnyRow) -> Result<GroupRecord, StoreError> {
    let policy: String = r.try_get("policy")?;
    let steps: String = r.try_get("steps")?;
    let u32_of = |col: &str| -> Result<u32, StoreError> {
        let v: i64 = r.try_get(col)?;
        u32::try_from(v).map_err(|_| StoreError::Corrupt(format!("group {col} {v}")))
    };
    Ok(GroupRecord {
        id: parse_uuid(&r.try_get::<String, _>("id")?)?,
        project: r.try_get("project")?,
        name: r.try_get("name")?,
        flavor: r.try_get("flavor")?,
        image: r.try_get("image")?,
        min: u32_of("min_size")?,
        max: u32_of("max_size")?,
        desired: u32_of("desired")?,
        target_cpu: u32_of("target_cpu")?,
        policy: PolicyKind::parse(&policy)
            .ok_or_else(|| StoreError::Corrupt(format!("group policy {policy:?}")))?,
        steps: serde_json::from_str(&steps)
            .map_err(|e| StoreError::Corrupt(format!("group steps: {e}")))?,
        window_secs: u32_of("window_secs")?,
        cooldown_secs: u32_of("cooldown_secs")?,
        state: r.try_get("state")?,
        replacements: r.try_get::<i64, _>("replacements")?.max(0) as u64,
        last_scaled_at: time::parse_opt(r.try_get("last_scaled_at")?)?,
        generation: r.try_get("generation")?,
        created_at: time::parse(&r.try_get::<String, _>("created_at")?)?,
        updated_at: time::parse(&r.try_get::<String, _>("updated_at")?)?,
    })
}

impl Store {
    /// Records a new group (and its `created` event).
    pub async fn insert_group(
        &self,
        g: &NewGroup,
        event: &NewGroupEvent,
    ) -> Result<GroupRecord, StoreError> {
        let now = time::now();
        let steps = serde_json::to_string(&g.steps)
            .map_err(|e| StoreError::Corrupt(format!("group steps: {e}")))?;
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO scaling_groups (id, project, name, flavor, image, min_size, max_size, \
             desired, target_cpu, policy, steps, window_secs, cooldown_secs, state, replacements, \
             last_scaled_at, generation, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, 0, NULL, 1, $15, $16)",
        )
        .bind(g.id.to_string())
        .bind(&g.project)
        .bind(&g.name)
        .bind(&g.flavor)
        .bind(&g.image)
        .bind(g.min as i64)
        .bind(g.max as i64)
        .bind(g.desired as i64)
        .bind(g.target_cpu as i64)
        .bind(g.policy.as_str())
        .bind(steps)
        .bind(g.window_secs as i64)
        .bind(g.cooldown_secs as i64)
        .bind(GROUP_ACTIVE)
        .bind(&now)
        .bind(&now)
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            StoreError::unique_or(e, || {
                format!(
                    "a group named {:?} already exists in project {:?}",
                    g.name, g.project
                )
            })
        })?;
        crate::group_events::insert_event(&mut tx, g.id, event).await?;
        tx.commit().await?;
        self.get_group_by_id(g.id).await
    }

    pub async fn get_group_by_id(&self, id: Uuid) -> Result<GroupRecord, StoreError> {
        let row = sqlx::query("SELECT * FROM scaling_groups WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::not_found("group", id.to_string()))?;
        group_from_row(&row)
    }

    /// Finds a group of `project` by name.
    pub async fn get_group(&self, project: &str, name: &str) -> Result<GroupRecord, StoreError> {
        let row = sqlx::query("SELECT * FROM scaling_groups WHERE project = $1 AND name = $2")
            .bind(project)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::not_found("group", name))?;
        group_from_row(&row)
    }

    /// Groups of a project (all projects when `None`), by name.
    pub async fn list_groups(&self, project: Option<&str>) -> Result<Vec<GroupRecord>, StoreError> {
        let rows = match project {
            Some(p) => {
                sqlx::query("SELECT * FROM scaling_groups WHERE project = $1 ORDER BY name")
                    .bind(p)
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                sqlx::query("SELECT * FROM scaling_groups ORDER BY project, name")
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.iter().map(group_from_row).collect()
    }

    /// One page of the groups `scope` sees, by project and name.
    pub async fn list_groups_page(
        &self,
        scope: &Scope,
        page: &PageRequest,
    ) -> Result<Page<GroupRecord>, StoreError> {
        let rows = BY_PROJECT_AND_NAME
            .fetch_in(
                &self.pool,
                page,
                "SELECT * FROM scaling_groups",
                scope,
                "project",
            )
            .await?;
        rows.try_map(group_from_row)
    }

    /// The group's members (every instance created for it that still exists, whatever its
    /// state), oldest first.
    pub async fn group_members(&self, group: Uuid) -> Result<Vec<InstanceRecord>, StoreError> {
        let rows =
            sqlx::query("SELECT * FROM instances WHERE group_id = $1 ORDER BY created_at, name")
                .bind(group.to_string())
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(instance_from_row).collect()
    }

    /// Writes new sizes and the event explaining them, compare-and-swap on the generation the
    /// caller read. `scaled_at` starts a cooldown (policy decisions); `None` keeps the last
    /// one (changes made by a user). Returns false, writing nothing, when the group changed
    /// meanwhile or is being deleted.
    pub async fn update_group_sizes(
        &self,
        id: Uuid,
        expected_generation: i64,
        sizes: GroupSizes,
        scaled_at: Option<DateTime<Utc>>,
        event: &NewGroupEvent,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let r = sqlx::query(
            "UPDATE scaling_groups SET min_size = $1, max_size = $2, desired = $3, target_cpu = $4, \
             window_secs = $5, cooldown_secs = $6, \
             last_scaled_at = COALESCE($7, last_scaled_at), generation = generation + 1, \
             updated_at = $8 WHERE id = $9 AND generation = $10 AND state = $11",
        )
        .bind(sizes.min as i64)
        .bind(sizes.max as i64)
        .bind(sizes.desired as i64)
        .bind(sizes.target_cpu as i64)
        .bind(sizes.window_secs as i64)
        .bind(sizes.cooldown_secs as i64)
        .bind(scaled_at.map(time::to_text))
        .bind(time::now())
        .bind(id.to_string())
        .bind(expected_generation)
        .bind(GROUP_ACTIVE)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() == 0 {
            return Ok(false);
        }
        crate::group_events::insert_event(&mut tx, id, event).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Counts a replaced member and records why.
    pub async fn count_group_replacement(
        &self,
        id: Uuid,
        event: &NewGroupEvent,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "UPDATE scaling_groups SET replacements = replacements + 1, updated_at = $1 WHERE id = $2",
        )
        .bind(time::now())
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?;
        crate::group_events::insert_event(&mut tx, id, event).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Marks the group `deleting` and records its delete operation, in one transaction;
    /// refused when it is already being deleted.
    pub async fn begin_group_delete(
        &self,
        id: Uuid,
        op: &NewOperation,
        event: &NewGroupEvent,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let r = sqlx::query(
            "UPDATE scaling_groups SET state = $1, generation = generation + 1, updated_at = $2 \
             WHERE id = $3 AND state = $4",
        )
        .bind(GROUP_DELETING)
        .bind(time::now())
        .bind(id.to_string())
        .bind(GROUP_ACTIVE)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::Conflict(
                "the group is already being deleted; `nimbus operation list` shows its operation"
                    .into(),
            ));
        }
        insert_operation(&mut tx, op).await?;
        crate::group_events::insert_event(&mut tx, id, event).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Makes a group being deleted active again (a cancelled delete).
    pub async fn reactivate_group(&self, id: Uuid) -> Result<(), StoreError> {
        let r = sqlx::query(
            "UPDATE scaling_groups SET state = $1, generation = generation + 1, updated_at = $2 \
             WHERE id = $3",
        )
        .bind(GROUP_ACTIVE)
        .bind(time::now())
        .bind(id.to_string())
        .execute(&self.pool)
        .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::not_found("group", id.to_string()));
        }
        Ok(())
    }

    /// Removes the group and its events (the last step of its delete; members must be gone).
    pub async fn delete_group_row(&self, id: Uuid) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let left: i64 = sqlx::query("SELECT COUNT(*) AS n FROM instances WHERE group_id = $1")
            .bind(id.to_string())
            .fetch_one(&mut *tx)
            .await?
            .try_get("n")?;
        if left > 0 {
            return Err(StoreError::Conflict(format!(
                "the group still has {left} instance(s)"
            )));
        }
        sqlx::query("DELETE FROM scaling_group_events WHERE group_id = $1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM scaling_groups WHERE id = $1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
