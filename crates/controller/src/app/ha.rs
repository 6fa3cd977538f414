//! High availability: restarting the HA instances of a down host elsewhere.

use crate::app::{App, AppError};
use crate::ops;
use crate::ops::instance_ha_restart::HaRestartParams;
use nimbus_api::OperationKind;
use nimbus_store::{InstanceRecord, NewOperation};
use uuid::Uuid;

impl App {
    /// Starts the HA restart of `inst`, placed on the down host `source`, on another host.
    /// Only the host liveness pass calls this, once `source` is down (fenced).
    pub async fn start_ha_restart(
        &self,
        inst: &InstanceRecord,
        source: &str,
    ) -> Result<Uuid, AppError> {
        let params = HaRestartParams {
            source: source.to_string(),
        };
        let op = NewOperation {
            id: Uuid::new_v4(),
            kind: OperationKind::InstanceHaRestart,
            project: inst.project.clone(),
            target_id: inst.id,
            target_name: inst.name.clone(),
            params: serde_json::to_value(&params).map_err(|e| AppError::internal(e.to_string()))?,
        };
        self.store().begin_instance_operation(inst.id, &op).await?;
        tracing::warn!(instance_id = %inst.id, operation_id = %op.id, host = source, "HA restart started: its host is down");
        ops::spawn(self.clone(), op.id);
        Ok(op.id)
    }
}
