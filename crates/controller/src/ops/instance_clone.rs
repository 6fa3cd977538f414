//! Create an instance as a clone resuming from another instance's snapshot.
//!
//! ```text
//! place_on_snapshot_host ─▶ clone_vm ───────────────────────▶ wait_running
//!  reserve room on the       the host starts a new VM (own id,   running, and the guest
//!  host the snapshot lives   MAC, IP; standalone disk) resumed   heard from (heartbeat or
//!  on; undo: release         from the snapshot; undo: delete it  ready marker)
//! ```
//! Snapshots are local to their host, so a clone can only start there. A failure unwinds
//! like a create: no VM, no disk, no reservation; the instance shows `error`.

use super::steps::{agent_err, app_err, destroy, instance, op_params, store_err};
use super::Plan;
use crate::app::migrations::resources_of;
use crate::app::placement_groups::GroupContext;
use crate::app::{App, AppError};
use async_trait::async_trait;
use nimbus_agent_api::{CloneRequest, VmRunState};
use nimbus_api::{ErrorCode, InstanceState};
use nimbus_ops::{Step, StepContext, StepError};
use nimbus_scheduler::HostCapacity;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Parameters of an `instance_clone` operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CloneParams {
    pub snapshot_id: Uuid,
    /// The instance the snapshot was taken of.
    pub source_instance: Uuid,
    /// Where the snapshot lives, and so where the clone runs.
    pub host: String,
}

pub fn plan(instance: Uuid) -> Plan {
    Plan {
        steps: vec![
            Box::new(PlaceOnSnapshotHost(instance)),
            Box::new(CloneVm(instance)),
            Box::new(WaitRunning(instance)),
        ],
        during: Some(InstanceState::Building),
        after: Some(InstanceState::Running),
    }
}

/// Reserves the clone's capacity on the snapshot's host, or fails saying it is full.
pub struct PlaceOnSnapshotHost(pub Uuid);

#[async_trait]
impl Step<App> for PlaceOnSnapshotHost {
    fn name(&self) -> &'static str {
        "place_on_snapshot_host"
    }

    async fn action(&self, app: &App, s: &StepContext<'_>) -> Result<Value, StepError> {
        let p: CloneParams = op_params(app, s.operation_id).await?;
        let inst = instance(app, self.0).await?;
        if inst.host.is_none() {
            let want = resources_of(&inst);
            let strategy = app.config().strategy;
            let only_snapshot_host = |pool: &[HostCapacity], _: Option<&GroupContext>| {
                let host = pool
                    .iter()
                    .find(|h| h.name == p.host)
                    .ok_or_else(|| AppError::not_found(format!("host {:?} not found", p.host)))?;
                nimbus_scheduler::place(std::slice::from_ref(host), &want, strategy)
                    .map(|h| h.name.clone())
                    .map_err(|e| AppError::new(ErrorCode::NoCapacity, e.to_string()))
            };
            app.choose_and_claim(&inst, only_snapshot_host, |claim| async move {
                app.store().claim_placement(self.0, &claim).await
            })
            .await
            .map_err(|e| StepError::permanent(e.message))?;
        }
        tracing::info!(instance_id = %self.0, host = %p.host, "clone placed on the snapshot's host");
        Ok(json!({ "host": p.host }))
    }

    async fn undo(&self, app: &App, _s: &StepContext<'_>) -> Result<(), StepError> {
        app.store().release_host(self.0).await.map_err(store_err)
    }
}

/// Has the host start the clone from the snapshot.
pub struct CloneVm(pub Uuid);

#[async_trait]
impl Step<App> for CloneVm {
    fn name(&self) -> &'static str {
        "clone_vm"
    }

    async fn action(&self, app: &App, s: &StepContext<'_>) -> Result<Value, StepError> {
        let p: CloneParams = op_params(app, s.operation_id).await?;
        s.progress("starting the clone from the snapshot").await;
        let inst = instance(app, self.0).await?;
        let spec = app.vm_spec(&inst).await.map_err(app_err)?;
        let status = app
            .agent_of(&p.host)
            .await
            .map_err(app_err)?
            .clone_vm(&CloneRequest {
                spec,
                source_vm: p.source_instance,
                snapshot_id: p.snapshot_id,
            })
            .await
            .map_err(agent_err)?;
        Ok(json!({ "state": status.state, "pid": status.pid }))
    }

    async fn undo(&self, app: &App, _s: &StepContext<'_>) -> Result<(), StepError> {
        destroy(app, self.0).await
    }
}

/// Waits until the clone runs and its guest is heard from.
pub struct WaitRunning(pub Uuid);

#[async_trait]
impl Step<App> for WaitRunning {
    fn name(&self) -> &'static str {
        "wait_running"
    }

    async fn action(&self, app: &App, s: &StepContext<'_>) -> Result<Value, StepError> {
        let inst = instance(app, self.0).await?;
        let host = inst
            .host
            .clone()
            .ok_or_else(|| StepError::permanent("the clone has no host"))?;
        let agent = app.agent_of(&host).await.map_err(app_err)?;
        let start = Instant::now();
        let deadline = app.config().boot_timeout;
        loop {
            match agent.vm(self.0).await {
                Ok(st) if st.state == VmRunState::Crashed => {
                    return Err(StepError::permanent(format!(
                        "the clone stopped: {}",
                        st.reason.unwrap_or_else(|| "no reason given".into())
                    )));
                }
                Ok(st)
                    if st.state == VmRunState::Running
                        && (st.guest_ready || st.first_heartbeat_unix_ms.is_some()) =>
                {
                    return Ok(json!({ "running_ms": start.elapsed().as_millis() as u64 }));
                }
                Ok(_) => {}
                Err(e) if e.is_transient() => {
                    tracing::debug!(instance_id = %self.0, error = %e, "agent unreachable while waiting for the clone");
                }
                Err(e) => return Err(agent_err(e)),
            }
            if start.elapsed() > deadline {
                return Err(StepError::permanent(format!(
                    "the clone was not heard from within {} s; see `nimbus instance log {}`",
                    deadline.as_secs(),
                    inst.name
                )));
            }
            s.progress("waiting for the clone's guest").await;
            s.sleep_or_cancel(Duration::from_millis(100)).await?;
        }
    }
}
