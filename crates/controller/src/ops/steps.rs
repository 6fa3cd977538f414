//! The steps operations are made of. Each is idempotent: it may run again after a crash.

use crate::app::placement_groups::{choose_host, GroupContext};
use crate::app::{App, AppError};
use async_trait::async_trait;
use nimbus_agent_api::{AgentClient, AgentError, StopRequest, VmRunState};
use nimbus_api::{ErrorCode, InstanceState};
use nimbus_ops::{Step, StepContext, StepError};
use nimbus_scheduler::{HostCapacity, Resources};
use nimbus_store::Scope;
use nimbus_store::{InstanceRecord, StoreError};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use uuid::Uuid;

pub(crate) fn agent_err(e: AgentError) -> StepError {
    if e.is_transient() {
        StepError::transient(e.to_string())
    } else {
        StepError::permanent(e.to_string())
    }
}

pub(crate) fn app_err(e: AppError) -> StepError {
    match e.code {
        ErrorCode::Unavailable | ErrorCode::Internal => StepError::transient(e.message),
        _ => StepError::permanent(e.message),
    }
}

pub(crate) fn store_err(e: StoreError) -> StepError {
    app_err(e.into())
}

/// The parameters operation `op` was started with.
pub(crate) async fn op_params<T: serde::de::DeserializeOwned>(
    app: &App,
    op: Uuid,
) -> Result<T, StepError> {
    let v = app.store().operation_params(op).await.map_err(store_err)?;
    serde_json::from_value(v).map_err(|e| StepError::permanent(format!("bad parameters: {e}")))
}

pub(crate) async fn instance(app: &App, id: Uuid) -> Result<InstanceRecord, StepError> {
    app.store()
        .get_instance_by_id(&Scope::All, id)
        .await
        .map_err(store_err)
}

/// The agent of the instance's host; `None` if it was never placed.
async fn host_agent(app: &App, inst: &InstanceRecord) -> Result<Option<AgentClient>, StepError> {
    match &inst.host {
        None => Ok(None),
        Some(h) => app.agent_of(h).await.map(Some).map_err(app_err),
    }
}

async fn placed_agent(app: &App, inst: &InstanceRecord) -> Result<AgentClient, StepError> {
    host_agent(app, inst)
        .await?
        .ok_or_else(|| StepError::permanent(format!("instance {} has no host", inst.name)))
}

/// Chooses a host and reserves the instance's capacity there.
pub struct Place(pub Uuid);

#[async_trait]
impl Step<App> for Place {
    fn name(&self) -> &'static str {
        "place"
    }

    async fn action(&self, app: &App, _s: &StepContext<'_>) -> Result<Value, StepError> {
        let inst = instance(app, self.0).await?;
        if let Some(host) = &inst.host {
            return Ok(json!({ "host": host }));
        }
        let want = Resources {
            vcpus: inst.vcpus as u64,
            memory_mib: inst.memory_mib,
            disk_gib: inst.disk_gib,
        };
        // Hosts that already hold the image first (no download), if one of them suits the
        // placement group too; else any host.
        let holding = app
            .hosts_holding(&inst.image_project, &inst.image)
            .await
            .map_err(app_err)?;
        let strategy = app.config().strategy;
        let choose = |pool: &[HostCapacity], group: Option<&GroupContext>| {
            let preferred: Vec<_> = pool
                .iter()
                .filter(|h| holding.contains(&h.name))
                .cloned()
                .collect();
            choose_host(&preferred, &want, strategy, group)
                .or_else(|_| choose_host(pool, &want, strategy, group))
                .map(|h| h.name.clone())
        };
        let host = app
            .choose_and_claim(&inst, choose, |claim| async move {
                app.store().claim_placement(self.0, &claim).await
            })
            .await
            .map_err(|e| StepError::permanent(e.message))?;
        tracing::info!(instance_id = %self.0, %host, "placed");
        Ok(json!({ "host": host }))
    }

    async fn undo(&self, app: &App, _s: &StepContext<'_>) -> Result<(), StepError> {
        app.store().release_host(self.0).await.map_err(store_err)
    }
}

/// Defines the VM on its host (writes the spec, creates the copy-on-write disk).
pub struct Define(pub Uuid);

#[async_trait]
impl Step<App> for Define {
    fn name(&self) -> &'static str {
        "define"
    }

    async fn action(&self, app: &App, _s: &StepContext<'_>) -> Result<Value, StepError> {
        let inst = instance(app, self.0).await?;
        let spec = app.vm_spec(&inst).await.map_err(app_err)?;
        let status = placed_agent(app, &inst)
            .await?
            .define_vm(&spec)
            .await
            .map_err(agent_err)?;
        Ok(json!({ "state": status.state }))
    }

    async fn undo(&self, app: &App, _s: &StepContext<'_>) -> Result<(), StepError> {
        destroy(app, self.0).await
    }
}

/// Removes the VM and its disk from its host (idempotent; nothing to do if never placed).
pub(crate) async fn destroy(app: &App, id: Uuid) -> Result<(), StepError> {
    let inst = match app.store().get_instance_by_id(&Scope::All, id).await {
        Ok(i) => i,
        Err(StoreError::NotFound { .. }) => return Ok(()),
        Err(e) => return Err(store_err(e)),
    };
    if let Some(agent) = host_agent(app, &inst).await? {
        agent.delete_vm(id).await.map_err(agent_err)?;
    }
    Ok(())
}

/// Launches the VM's QEMU on its host.
pub struct Boot(pub Uuid);

#[async_trait]
impl Step<App> for Boot {
    fn name(&self) -> &'static str {
        "boot"
    }

    async fn action(&self, app: &App, s: &StepContext<'_>) -> Result<Value, StepError> {
        s.progress("launching QEMU").await;
        let inst = instance(app, self.0).await?;
        let status = placed_agent(app, &inst)
            .await?
            .start_vm(self.0)
            .await
            .map_err(agent_err)?;
        Ok(json!({ "pid": status.pid, "started_at": status.started_at }))
    }
}

/// Waits until the guest is ready (its report to the metadata service, or its ready marker;
/// see `ready_via`), or QEMU runs, for images without a marker.
pub struct WaitReady(pub Uuid);

#[async_trait]
impl Step<App> for WaitReady {
    fn name(&self) -> &'static str {
        "wait_ready"
    }

    async fn action(&self, app: &App, s: &StepContext<'_>) -> Result<Value, StepError> {
        let inst = instance(app, self.0).await?;
        let agent = placed_agent(app, &inst).await?;
        let has_marker = app
            .store()
            .get_image_in(&inst.image_project, &inst.image)
            .await
            .map(|i| i.ready_marker.is_some())
            .unwrap_or(false);
        let start = Instant::now();
        let deadline = app.config().boot_timeout;
        loop {
            let waited = start.elapsed();
            match agent.vm(self.0).await {
                Ok(st) if st.state == VmRunState::Crashed => {
                    return Err(StepError::permanent(format!(
                        "the VM stopped while booting: {}",
                        st.reason.unwrap_or_else(|| "no reason given".into())
                    )));
                }
                Ok(st) if st.state == VmRunState::Stopped => {
                    return Err(StepError::permanent("the VM powered off while booting"));
                }
                Ok(st) if st.state == VmRunState::Running && (st.guest_ready || !has_marker) => {
                    let via = st.ready_via.filter(|_| st.guest_ready);
                    // Shown by `instance show` at once (the reconciler keeps it current).
                    if let Err(e) = app.store().set_guest_ready(self.0, via).await {
                        tracing::warn!(instance_id = %self.0, error = %e, "cannot record readiness");
                    }
                    return Ok(json!({
                        "boot_ms": waited.as_millis() as u64,
                        "ready_via": via.map(|v| v.as_str()),
                    }));
                }
                Ok(_) => {}
                Err(e) if e.is_transient() => {
                    tracing::debug!(instance_id = %self.0, error = %e, "agent unreachable while waiting for boot");
                }
                Err(e) => return Err(agent_err(e)),
            }
            if waited > deadline {
                return Err(StepError::permanent(format!(
                    "the guest did not report ready within {} s; see `nimbus instance log {}`",
                    deadline.as_secs(),
                    inst.name
                )));
            }
            s.progress(&format!(
                "waiting for the guest to boot ({} s)",
                waited.as_secs()
            ))
            .await;
            s.sleep_or_cancel(Duration::from_millis(50)).await?;
        }
    }
}

/// Powers the VM off (gracefully, forced after a timeout).
pub struct PowerOff(pub Uuid);

#[async_trait]
impl Step<App> for PowerOff {
    fn name(&self) -> &'static str {
        "power_off"
    }

    async fn action(&self, app: &App, s: &StepContext<'_>) -> Result<Value, StepError> {
        s.progress("asking the guest to power off").await;
        let inst = instance(app, self.0).await?;
        let status = placed_agent(app, &inst)
            .await?
            .stop_vm(self.0, &StopRequest::default())
            .await
            .map_err(agent_err)?;
        Ok(json!({ "state": status.state }))
    }
}

/// Resets the VM (a hard reboot).
pub struct Reset(pub Uuid);

#[async_trait]
impl Step<App> for Reset {
    fn name(&self) -> &'static str {
        "reset"
    }

    async fn action(&self, app: &App, _s: &StepContext<'_>) -> Result<Value, StepError> {
        let inst = instance(app, self.0).await?;
        placed_agent(app, &inst)
            .await?
            .reboot_vm(self.0)
            .await
            .map_err(agent_err)?;
        Ok(json!({}))
    }
}

/// Deletes the VM and its disk on the host. Point of no return of a delete.
pub struct Destroy(pub Uuid);

#[async_trait]
impl Step<App> for Destroy {
    fn name(&self) -> &'static str {
        "destroy_vm"
    }

    async fn action(&self, app: &App, s: &StepContext<'_>) -> Result<Value, StepError> {
        s.progress("removing the VM and its disk from the host")
            .await;
        destroy(app, self.0).await?;
        Ok(json!({}))
    }

    fn is_point_of_no_return(&self, _output: &Value) -> bool {
        true
    }
}

/// Removes the instance record, which releases its capacity, and the records of its
/// snapshots (their files went with the VM on its host).
pub struct Forget(pub Uuid);

#[async_trait]
impl Step<App> for Forget {
    fn name(&self) -> &'static str {
        "remove_record"
    }

    async fn action(&self, app: &App, _s: &StepContext<'_>) -> Result<Value, StepError> {
        let snapshots = app
            .store()
            .delete_snapshots_of(self.0)
            .await
            .map_err(store_err)?;
        app.store()
            .delete_instance_row(self.0)
            .await
            .map_err(store_err)?;
        Ok(json!({ "snapshots_deleted": snapshots }))
    }
}

/// What the host says the instance's state is (`error` if it cannot be asked).
pub async fn state_from_agent(app: &App, id: Uuid) -> InstanceState {
    let Ok(inst) = app.store().get_instance_by_id(&Scope::All, id).await else {
        return InstanceState::Error;
    };
    let Ok(Some(agent)) = host_agent(app, &inst).await else {
        return InstanceState::Error;
    };
    match agent.vm(id).await {
        Ok(st) => instance_state_of(st.state).unwrap_or(InstanceState::Error),
        Err(_) => InstanceState::Error,
    }
}

/// The instance state a settled VM state means (`None` while the VM is in transition).
pub fn instance_state_of(vm: VmRunState) -> Option<InstanceState> {
    match vm {
        VmRunState::Running => Some(InstanceState::Running),
        VmRunState::Stopped => Some(InstanceState::Stopped),
        VmRunState::Crashed => Some(InstanceState::Error),
        VmRunState::Starting | VmRunState::Stopping | VmRunState::Migrated => None,
    }
}
