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

#[cfg(test)]
mod tests {
    use crate::testing::{new_instance, pick, stores};
    use crate::{NewOperation, Scope, Store, StoreError};
    use nimbus_api::{OperationKind, HA_PRIORITY_HIGH};
    use uuid::Uuid;

    /// An instance placed on `host`, its create finished.
    async fn placed(s: &Store, name: &str, host: &str) -> Uuid {
        let (mut new, op) = new_instance("default", name);
        new.ha_restart = true;
        new.ha_priority = HA_PRIORITY_HIGH;
        let id = new.id;
        s.insert_instance(&new, &op, pick).await.expect("insert");
        s.reserve_host(id, host).await.expect("place");
        s.end_instance_operation(id, op.id).await.expect("end");
        id
    }

    async fn begin(s: &Store, id: Uuid, kind: OperationKind) {
        let op = NewOperation {
            id: Uuid::new_v4(),
            kind,
            project: "default".into(),
            target_id: id,
            target_name: "x".into(),
            params: serde_json::json!({}),
        };
        s.begin_instance_operation(id, &op).await.expect("begin");
    }

    #[tokio::test]
    async fn policy_and_priority_round_trip_and_unplaced_restarts_are_listed() {
        for (s, _d) in stores().await {
            let db = placed(&s, "db", "host1").await;
            let got = s.get_instance_by_id(&Scope::All, db).await.expect("get");
            assert_eq!((got.ha_restart, got.ha_priority), (true, HA_PRIORITY_HIGH));
            s.set_instance_ha(db, false, 42).await.expect("set");
            let got = s.get_instance_by_id(&Scope::All, db).await.expect("get");
            assert_eq!((got.ha_restart, got.ha_priority), (false, 42));
            let missing = s.set_instance_ha(Uuid::new_v4(), true, 1).await;
            assert!(
                matches!(missing, Err(StoreError::NotFound { .. })),
                "{missing:?}"
            );

            let web = placed(&s, "web", "host1").await;
            let other = placed(&s, "other", "host2").await;
            begin(&s, db, OperationKind::InstanceHaRestart).await;
            begin(&s, web, OperationKind::InstanceStop).await;
            begin(&s, other, OperationKind::InstanceHaRestart).await;
            let unplaced = s.unplaced_ha_restarts("host1").await.expect("list");
            let ids: Vec<Uuid> = unplaced.iter().map(|i| i.id).collect();
            assert_eq!(ids, vec![db], "only host1's HA restarts");
        }
    }
}
