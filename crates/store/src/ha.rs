//! High availability: each instance's HA policy and restart priority, and the restarts of a
//! down host still waiting for a place (they go higher priority first).

use crate::instances::instance_from_row;
use crate::{time, InstanceRecord, Store, StoreError};
use nimbus_api::OperationKind;
use uuid::Uuid;

impl Store {
    /// Sets an instance's HA policy (`restart` or none) and restart priority.
    pub async fn set_instance_ha(
        &self,
        id: Uuid,
        restart: bool,
        priority: u16,
    ) -> Result<(), StoreError> {
        let r = sqlx::query(
            "UPDATE instances SET ha = $1, ha_priority = $2, generation = generation + 1, \
             updated_at = $3 WHERE id = $4",
        )
        .bind(restart.then(|| "restart".to_string()))
        .bind(i64::from(priority))
        .bind(time::now())
        .bind(id.to_string())
        .execute(&self.pool)
        .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::not_found("instance", id.to_string()));
        }
        Ok(())
    }

    /// The instances still placed on `host` that an `instance_ha_restart` operation is
    /// acting on: restarts of a down host that have not taken their new place yet.
    pub async fn unplaced_ha_restarts(
        &self,
        host: &str,
    ) -> Result<Vec<InstanceRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT i.* FROM instances i JOIN operations o ON o.id = i.operation_id \
             WHERE i.host = $1 AND o.kind = $2",
        )
        .bind(host)
        .bind(OperationKind::InstanceHaRestart.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(instance_from_row).collect()
    }
}
