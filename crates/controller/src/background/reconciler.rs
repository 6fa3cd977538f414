//! The reconciler: polls every host's agent, applies VM status reports to instances, and
//! repairs drift.
//!
//! - A report is applied only when it is newer than the last one applied (agent generation)
//!   and no operation owns the instance (operations apply their own results).
//! - A VM that died shows `error` with the agent's reason.
//! - An instance that should run on a host whose agent does not know it goes to `error`.
//! - A VM the agent runs for an instance that no longer exists (e.g. a delete whose undo
//!   could not reach the agent) is an orphan and is deleted, so no QEMU or disk leaks.

use crate::app::App;
use crate::ops::steps::instance_state_of;
use nimbus_agent_api::{VmRunState, VmStatus};
use nimbus_api::InstanceState;
use nimbus_store::Scope;
use nimbus_store::{HostRecord, InstanceRecord, StoreError};
use std::collections::HashMap;
use uuid::Uuid;

/// Runs forever, one pass every `reconcile_interval`.
pub async fn run(app: App) {
    let mut tick = tokio::time::interval(app.config().reconcile_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = pass(&app).await {
            tracing::warn!(error = %e, "reconcile pass failed");
        }
    }
}

/// One pass over all hosts.
pub async fn pass(app: &App) -> Result<(), StoreError> {
    let hosts = app.store().list_hosts().await?;
    let instances = app.store().list_instances(&Scope::All).await?;
    let by_id: HashMap<Uuid, &InstanceRecord> = instances.iter().map(|i| (i.id, i)).collect();
    for host in &hosts {
        let vms = match app.agent(&host.agent_url).list_vms().await {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!(host = %host.name, error = %e, "agent unreachable");
                continue;
            }
        };
        reconcile_host(app, host, &vms, &instances, &by_id).await?;
    }
    Ok(())
}

async fn reconcile_host(
    app: &App,
    host: &HostRecord,
    vms: &[VmStatus],
    instances: &[InstanceRecord],
    by_id: &HashMap<Uuid, &InstanceRecord>,
) -> Result<(), StoreError> {
    for vm in vms {
        match by_id.get(&vm.id) {
            None => delete_orphan(app, host, vm.id).await,
            Some(inst) if inst.host.as_deref() == Some(host.name.as_str()) => {
                apply_report(app, inst, vm).await?
            }
            // Placed elsewhere: a migration in flight (left to it), or a copy it left behind.
            Some(inst) if inst.operation_id.is_none() => delete_stale_copy(app, host, inst).await,
            Some(_) => {}
        }
    }
    for inst in instances {
        let here = inst.host.as_deref() == Some(host.name.as_str());
        let expected_running =
            matches!(inst.state, InstanceState::Running | InstanceState::Stopped);
        if here
            && expected_running
            && inst.operation_id.is_none()
            && !vms.iter().any(|v| v.id == inst.id)
        {
            let reason = format!("the VM is missing on host {}", host.name);
            tracing::warn!(instance_id = %inst.id, host = %host.name, "VM missing on its host");
            app.store()
                .apply_agent_report(
                    inst.id,
                    inst.generation,
                    inst.agent_generation + 1,
                    InstanceState::Error,
                    Some(&reason),
                )
                .await?;
        }
    }
    Ok(())
}

async fn apply_report(app: &App, inst: &InstanceRecord, vm: &VmStatus) -> Result<(), StoreError> {
    let gen = vm.generation as i64;
    if gen <= inst.agent_generation || inst.operation_id.is_some() {
        return Ok(());
    }
    let Some(state) = instance_state_of(vm.state) else {
        return Ok(());
    };
    let reason = if vm.state == VmRunState::Crashed {
        Some(
            vm.reason
                .clone()
                .unwrap_or_else(|| "the VM stopped unexpectedly".into()),
        )
    } else {
        None
    };
    if state == inst.state && reason == inst.reason {
        app.store().note_agent_generation(inst.id, gen).await?;
        return Ok(());
    }
    let applied = app
        .store()
        .apply_agent_report(inst.id, inst.generation, gen, state, reason.as_deref())
        .await?;
    if applied {
        tracing::info!(instance_id = %inst.id, from = %inst.state, to = %state, ?reason, "instance state from agent report");
    }
    Ok(())
}

async fn delete_orphan(app: &App, host: &HostRecord, id: Uuid) {
    // Re-read: the instance may have been created after the pass read the instance list
    // (its row always exists before its VM is defined, so this check is race-free).
    if !matches!(
        app.store().get_instance_by_id(&Scope::All, id).await,
        Err(StoreError::NotFound { .. })
    ) {
        return;
    }
    tracing::warn!(instance_id = %id, host = %host.name, "deleting orphan VM (no such instance)");
    if let Err(e) = app.agent(&host.agent_url).delete_vm(id).await {
        tracing::warn!(instance_id = %id, host = %host.name, error = %e, "could not delete orphan VM");
    }
}

/// Deletes the copy of an instance on a host it no longer runs on (e.g. a source a migration
/// could not clean up). A shared disk stays: the instance uses it on its current host.
async fn delete_stale_copy(app: &App, host: &HostRecord, inst: &InstanceRecord) {
    // Re-read: the pass's instance list may be older than this host's VM list (a pass waits
    // on silent agents), and an operation may since have placed the instance here (an HA
    // restart defines its VM on the target only after moving the instance there).
    match app.store().get_instance_by_id(&Scope::All, inst.id).await {
        Ok(now)
            if now.operation_id.is_none() && now.host.as_deref() != Some(host.name.as_str()) => {}
        _ => return,
    }
    tracing::warn!(instance_id = %inst.id, host = %host.name, placed = ?inst.host, "deleting stale copy of a moved instance");
    let agent = app.agent(&host.agent_url);
    let res = agent
        .remove_vm(inst.id, host.shared_storage.is_some())
        .await;
    if let Err(e) = res {
        tracing::warn!(instance_id = %inst.id, host = %host.name, error = %e, "could not delete stale copy");
    }
}
