//! High availability: restarting the HA instances of a down host elsewhere.

use crate::app::Caller;
use crate::app::{App, AppError};
use crate::ops;
use crate::ops::instance_ha_restart::HaRestartParams;
use nimbus_api::{
    EvacuateLeft, EvacuateResult, HaPolicy, HostState, OperationKind, SetInstanceHa,
    HA_PRIORITY_MAX, HA_PRIORITY_MEDIUM,
};
use nimbus_store::Scope;
use nimbus_store::{InstanceRecord, NewOperation};
use std::cmp::Reverse;
use uuid::Uuid;

/// Where an HA instance of a down host comes in the restart order (smaller first): higher
/// priority first; among equals the larger first (the hardest to place get the room), then
/// by id so that every controller sees one order.
pub(crate) fn restart_rank(i: &InstanceRecord) -> (Reverse<u16>, Reverse<u64>, Reverse<u32>, Uuid) {
    (
        Reverse(i.ha_priority),
        Reverse(i.memory_mib),
        Reverse(i.vcpus),
        i.id,
    )
}

/// The restart priority a create asks for (medium when none), refused when out of range.
pub(crate) fn requested_priority(asked: Option<u16>) -> Result<u16, AppError> {
    match asked {
        None => Ok(HA_PRIORITY_MEDIUM),
        Some(p) if p <= HA_PRIORITY_MAX => Ok(p),
        Some(p) => Err(AppError::bad_request(format!(
            "restart priority {p} is out of range: give 0 to {HA_PRIORITY_MAX} (high 900, \
             medium 500, low 100)"
        ))),
    }
}

impl App {
    /// Sets the HA policy and restart priority of instance `id_or_name` (running or not);
    /// answers them. A restart already under way keeps the priority it started with.
    pub async fn set_instance_ha(
        &self,
        caller: &Caller,
        id_or_name: &str,
        req: &SetInstanceHa,
    ) -> Result<SetInstanceHa, AppError> {
        caller.require_write()?;
        let priority = requested_priority(Some(req.ha_priority))?;
        let inst = self.find_instance(caller, id_or_name).await?;
        let restart = req.ha == Some(HaPolicy::Restart);
        self.store()
            .set_instance_ha(inst.id, restart, priority)
            .await?;
        tracing::info!(instance_id = %inst.id, restart, priority, "instance HA set");
        Ok(SetInstanceHa {
            ha: req.ha,
            ha_priority: priority,
        })
    }

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

    /// Restarts elsewhere every instance of a down host whose disk is on shared storage,
    /// HA or not (the operator knows the host is dead). Refused while the host is up or only
    /// unreachable: until it is down its agent may still run the VMs (it fences itself only
    /// after the fence timeout).
    pub async fn evacuate_host(
        &self,
        caller: &Caller,
        name: &str,
    ) -> Result<EvacuateResult, AppError> {
        caller.require_admin()?;
        let host = self.get_host(name).await?;
        match host.state {
            HostState::Down => {}
            HostState::Up => {
                return Err(AppError::conflict(format!(
                    "host {name} is up: move its instances with `nimbus host drain {name}`"
                )))
            }
            HostState::Unreachable => {
                return Err(AppError::conflict(format!(
                    "host {name} is unreachable but not yet down: its agent may still run its \
                     VMs until it fences itself; evacuate it once `nimbus host show {name}` \
                     says down ({} s after its last report)",
                    nimbus_agent_api::liveness::DOWN_AFTER.as_secs()
                )))
            }
        }
        let record = self.store().get_host(name).await?;
        let mut result = EvacuateResult {
            operations: Vec::new(),
            left: Vec::new(),
        };
        let mut instances = self.store().list_instances(&Scope::All).await?;
        // In restart order, as the HA restarts of a down host (each waits for the ranks above).
        instances.sort_by_key(restart_rank);
        for inst in instances.iter().filter(|i| i.host.as_deref() == Some(name)) {
            let left = |reason: String| EvacuateLeft {
                instance: inst.name.clone(),
                reason,
            };
            if inst.operation_id.is_some() {
                result
                    .left
                    .push(left("an operation is acting on it".into()));
            } else if record.shared_storage.is_none() {
                result.left.push(left(format!(
                    "its disk is local to {name}: it cannot run elsewhere (that would start \
                     it from nothing); it runs again when {name} is back"
                )));
            } else {
                let op = self.start_ha_restart(inst, name).await?;
                result
                    .operations
                    .push(self.store().get_operation(&Scope::All, op).await?);
            }
        }
        Ok(result)
    }
}
