//! Which instances are in which security groups.

use super::group_id;
use crate::locks::lock_project;
use crate::{Store, StoreError};
use nimbus_api::DEFAULT_SECGROUP;
use sqlx::{Any, Row, Transaction};
use uuid::Uuid;

impl Store {
    /// Replaces the groups of instance `instance` of `project` with `names` (none: the
    /// `default` group). Groups or instances of other projects are not found.
    pub async fn set_instance_secgroups(
        &self,
        project: &str,
        instance: Uuid,
        names: &[String],
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        lock_project(&mut tx, project).await?;
        let found = sqlx::query("SELECT id FROM instances WHERE id = $1 AND project = $2")
            .bind(instance.to_string())
            .bind(project)
            .fetch_optional(&mut *tx)
            .await?;
        if found.is_none() {
            return Err(StoreError::not_found("instance", instance.to_string()));
        }
        leave_groups(&mut tx, instance).await?;
        join_groups(&mut tx, project, instance, names).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Names of the groups instance `instance` is in, sorted.
    pub async fn instance_secgroups(&self, instance: Uuid) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT g.name FROM instance_secgroups m JOIN secgroups g ON g.id = m.group_id \
             WHERE m.instance_id = $1 ORDER BY g.name",
        )
        .bind(instance.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| r.try_get("name").map_err(StoreError::from))
            .collect()
    }
}

/// Puts `instance` into groups `names` of `project` inside `tx` (none: the `default` group).
pub(crate) async fn join_groups(
    tx: &mut Transaction<'_, Any>,
    project: &str,
    instance: Uuid,
    names: &[String],
) -> Result<(), StoreError> {
    let default = [DEFAULT_SECGROUP.to_string()];
    let names = if names.is_empty() {
        &default[..]
    } else {
        names
    };
    for (i, name) in names.iter().enumerate() {
        if names[..i].contains(name) {
            continue;
        }
        let id = group_id(tx, project, name).await?;
        sqlx::query("INSERT INTO instance_secgroups (instance_id, group_id) VALUES ($1, $2)")
            .bind(instance.to_string())
            .bind(id)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// Takes `instance` out of all its groups inside `tx` (its delete, or a new set of groups).
pub(crate) async fn leave_groups(
    tx: &mut Transaction<'_, Any>,
    instance: Uuid,
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM instance_secgroups WHERE instance_id = $1")
        .bind(instance.to_string())
        .execute(&mut **tx)
        .await?;
    Ok(())
}
