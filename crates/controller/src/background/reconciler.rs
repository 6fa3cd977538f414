//! The reconciler: polls every host's agent, applies VM status reports to instances, and
//! repairs drift.
//!
//! - An instance still held by an operation that ended (its finish failed) is released.
//! - A report is applied only when it is newer than the last one applied (agent generation)
//!   and no operation owns the instance (operations apply their own results).
//! - A VM that died shows `error` with the agent's reason.
//! - An instance that should run on a host whose agent does not know it goes to `error`.
//! - Nothing is destroyed for being unknown. A VM the agent runs that the store does not
//!   account for is an orphan: recorded (`nimbus host orphans`, `/metrics`), left running,
//!   deleted only by an operator (`nimbus host orphans delete`) or when positive knowledge
//!   says it is a leftover of nimbus's own:
//!   - no instance has its id but a tombstone says nimbus deleted that instance (a delete
//!     whose agent call was lost): the VM and its disk go;
//!   - its instance is placed on another host and the newest completed migration of the
//!     instance went from this host to that one (a source its migration could not clean
//!     up): the copy goes, a shared disk stays.
//!
//!   Anything else (an empty or restored database, a host registered under a wrong name,
//!   a failed migration's leftover) is only flagged.

use crate::app::App;
use crate::background::task::{PassError, Run, Task};
use crate::ops::steps::instance_state_of;
use nimbus_agent_api::{VmRunState, VmStatus};
use nimbus_api::{InstanceState, OrphanKind};
use nimbus_store::{HostRecord, InstanceRecord, Scope, SeenOrphan, StoreError};
use std::collections::HashMap;
use uuid::Uuid;

/// The reconciler as a background task: one controller at a time (so one reconciler acts on
/// an instance), every `reconcile_interval`.
pub struct Reconciler;

#[async_trait::async_trait]
impl Task for Reconciler {
    const NAME: &'static str = "reconciler";
    const RUN: Run = Run::OneController;

    fn interval(&self, app: &App) -> std::time::Duration {
        app.config().reconcile_interval
    }

    async fn pass(&mut self, app: &App) -> Result<(), PassError> {
        Ok(pass(app).await?)
    }
}

/// One pass over all hosts, after settling operations whose end was not applied.
pub async fn pass(app: &App) -> Result<(), StoreError> {
    if let Err(e) = crate::ops::settle_ended(app).await {
        tracing::warn!(error = %e, "cannot settle ended operations");
    }
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
    let mut orphans = Vec::new();
    for vm in vms {
        match by_id.get(&vm.id) {
            None => orphans.extend(unknown_vm(app, host, vm).await?),
            Some(inst) if inst.host.as_deref() == Some(host.name.as_str()) => {
                apply_report(app, inst, vm).await?
            }
            // Placed elsewhere while an operation runs: a migration in flight, left to it.
            Some(inst) if inst.operation_id.is_some() => {}
            Some(inst) => orphans.extend(copy_elsewhere(app, host, inst, vm).await?),
        }
    }
    // Said once, when first seen (`nimbus host orphans` lists them for as long as they run).
    for id in app.store().set_orphans(&host.name, &orphans).await? {
        tracing::warn!(instance_id = %id, host = %host.name, "orphan VM found: left running (`nimbus host orphans`)");
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

fn orphan(vm: &VmStatus, kind: OrphanKind, placed_on: Option<String>) -> SeenOrphan {
    SeenOrphan {
        vm_id: vm.id,
        kind,
        vm_state: format!("{:?}", vm.state).to_lowercase(),
        placed_on,
    }
}

/// A VM no instance has: removed if a tombstone proves nimbus deleted its instance, else
/// an orphan.
async fn unknown_vm(
    app: &App,
    host: &HostRecord,
    vm: &VmStatus,
) -> Result<Option<SeenOrphan>, StoreError> {
    if app.store().is_tombstoned(vm.id).await? {
        tracing::warn!(instance_id = %vm.id, host = %host.name, "deleting the VM of a deleted instance (tombstone)");
        if let Err(e) = app.agent(&host.agent_url).delete_vm(vm.id).await {
            tracing::warn!(instance_id = %vm.id, host = %host.name, error = %e, "could not delete the VM of a deleted instance");
        }
        return Ok(None);
    }
    // Re-read: the instance may have been created after the pass read the instance list
    // (its row always exists before its VM is defined).
    match app.store().get_instance_by_id(&Scope::All, vm.id).await {
        Err(StoreError::NotFound { .. }) => {}
        Err(e) => return Err(e),
        Ok(_) => return Ok(None),
    }
    tracing::debug!(instance_id = %vm.id, host = %host.name, "orphan VM: no such instance");
    Ok(Some(orphan(vm, OrphanKind::Unknown, None)))
}

/// A copy of an instance placed on another host: removed if the newest completed migration
/// of the instance moved it from this host to where it is placed, else flagged.
async fn copy_elsewhere(
    app: &App,
    host: &HostRecord,
    inst: &InstanceRecord,
    vm: &VmStatus,
) -> Result<Option<SeenOrphan>, StoreError> {
    let migrations = app.store().migrations_of(&Scope::All, inst.id).await?;
    let newest_done = migrations.iter().find(|m| m.state == "succeeded");
    let stale = newest_done
        .is_some_and(|m| m.source == host.name && Some(m.target.as_str()) == inst.host.as_deref());
    if stale {
        delete_stale_copy(app, host, inst).await;
        return Ok(None);
    }
    tracing::debug!(instance_id = %inst.id, host = %host.name, placed = ?inst.host, "copy of an instance on a host it is not placed on");
    Ok(Some(orphan(vm, OrphanKind::Misplaced, inst.host.clone())))
}

async fn apply_report(app: &App, inst: &InstanceRecord, vm: &VmStatus) -> Result<(), StoreError> {
    let ready = vm
        .ready_via
        .filter(|_| vm.guest_ready && vm.state == VmRunState::Running);
    if ready != inst.ready {
        app.store().set_guest_ready(inst.id, ready).await?;
    }
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
    } else if state == inst.state {
        // A running instance keeps the note of how it got there (e.g. an HA restart from a
        // snapshot: what was lost), until its state changes.
        inst.reason.clone()
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

/// Deletes the copy of an instance on a host it no longer runs on (a source its migration
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
