//! Restart an HA instance of a down host on another host, from its disk on shared storage or,
//! for a disk local to the dead host, from its newest snapshot whose replica a live
//! controller holds (issue 14, part 4; see [`super::ha_from_snapshot`] and
//! [`super::ha_replica_choice`]).
//!
//! ```text
//! choose_restart_host ─▶ define_on_target ─▶ boot ─▶ wait_ready ─▶ record_restart
//!  host := target          define it stopped,   start    the guest is  (from a snapshot:
//!  (room reserved there,   linked to its        QEMU     up (its ready  its records follow,
//!  the dead host's freed)  shared disk, or on   (or      marker)        the note)
//!                          the replica          restore)
//! ```
//! Restarts of one down host take their places in priority order (see
//! [`crate::app::ha::restart_rank`]): `choose_restart_host` first waits, bounded, until no
//! higher-ranked restart of that host is still unplaced, so when room is short the lower
//! ones are refused ("no capacity"), whatever order their operations run in and whichever
//! controller runs them.
//!
//! Started by the host liveness pass only once the host is `down`, i.e. after the fence
//! timeout plus its margin since the host's last report: its agent, if it still runs, has
//! stopped the old copy (see `nimbus_agent_api::liveness`). A disk local to the dead host
//! cannot be reached: the instance restarts from its newest restorable replicated snapshot,
//! and without one the operation fails at once saying so, and the instance stays `error` until its host
//! is back (restart from nothing would lose the disk). Until `boot` a failure moves the
//! instance back to the dead host's placement and deletes the target's definition (never
//! the shared disk).

use super::ha_from_snapshot::{self, RecordRestart, RestoreOrBoot};
use super::ha_replica_choice::{restorable_replica, FromSnapshot};
use super::steps::{agent_err, app_err, instance, op_params, store_err, WaitReady};
use super::Plan;
use crate::app::ha::restart_rank;
use crate::app::migrations::migration_target;
use crate::app::placement_groups::GroupContext;
use crate::app::{App, AppError};
use async_trait::async_trait;
use nimbus_agent_api::{ColdIncomingRequest, DiskTransfer};
use nimbus_api::{ErrorCode, InstanceState};
use nimbus_ops::{Step, StepContext, StepError};
use nimbus_scheduler::HostCapacity;
use nimbus_store::{HostClaim, InstanceRecord};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;
use tokio::time::Instant;
use uuid::Uuid;

/// The operation's parameters.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HaRestartParams {
    /// The down host the instance was on.
    pub source: String,
}

pub fn plan(instance: Uuid) -> Plan {
    Plan {
        steps: vec![
            Box::new(ChooseRestartHost(instance)),
            Box::new(DefineOnTarget(instance)),
            Box::new(RestoreOrBoot(instance)),
            Box::new(WaitReady(instance)),
            Box::new(RecordRestart(instance)),
            Box::new(CountRestart(instance)),
        ],
        during: Some(InstanceState::Starting),
        after: Some(InstanceState::Running),
    }
}

/// Picks the target (placement groups and capacity honoured) and moves the instance's
/// placement there; answers the target and the shared disk's path, or the snapshot it
/// restarts from (a local disk).
pub struct ChooseRestartHost(pub Uuid);

#[async_trait]
impl Step<App> for ChooseRestartHost {
    fn name(&self) -> &'static str {
        "choose_restart_host"
    }

    async fn action(&self, app: &App, s: &StepContext<'_>) -> Result<Value, StepError> {
        let p: HaRestartParams = op_params(app, s.operation_id).await?;
        let inst = instance(app, self.0).await?;
        let source = app.store().get_host(&p.source).await.map_err(store_err)?;
        let from_snapshot = match source.shared_storage {
            Some(_) => None,
            None => Some(restorable_replica(app, self.0, &p.source).await?),
        };
        let target = match inst.host.as_deref() {
            // Moved already (this step runs again after a crash).
            Some(h) if h != p.source => h.to_string(),
            _ => {
                wait_for_higher_ranked(app, &inst, &p.source).await?;
                let hosts = app.store().list_hosts().await.map_err(store_err)?;
                let unfit = app
                    .unfit_targets(&inst, None)
                    .await
                    .map_err(|e| StepError::permanent(e.message))?;
                let choose = |pool: &[HostCapacity], group: Option<&GroupContext>| {
                    let target =
                        migration_target(pool, group, app, &inst, (&p.source, None), &unfit)
                            .map_err(|e| {
                                let what = if e.code == ErrorCode::NoCapacity {
                                    "no capacity to restart it on another host (higher priorities \
                                 went first)"
                                } else {
                                    "no host to restart it on"
                                };
                                AppError::new(e.code, format!("{what}: {}", e.message))
                            })?;
                    let dst = hosts
                        .iter()
                        .find(|h| h.name == target)
                        .ok_or_else(|| AppError::internal(format!("host {target} vanished")))?;
                    if from_snapshot.is_none() {
                        shared_dir(&source, dst).map_err(|e| AppError::conflict(e.to_string()))?;
                    }
                    Ok(target)
                };
                let from = p.source.as_str();
                let take = |claim: HostClaim| async move {
                    app.store().claim_move(self.0, from, &claim).await
                };
                let target = app
                    .choose_and_claim(&inst, choose, take)
                    .await
                    .map_err(|e| StepError::permanent(e.message))?;
                target
            }
        };
        if let Some(snap) = &from_snapshot {
            tracing::info!(instance_id = %self.0, source = %p.source, %target, snapshot = %snap.name, "HA restart from a replicated snapshot: target chosen");
            return Ok(json!({ "source": p.source, "target": target, "snapshot": snap.to_json() }));
        }
        let dst = app.store().get_host(&target).await.map_err(store_err)?;
        let disk = shared_dir(&source, &dst)?
            .join(self.0.to_string())
            .join("disk.qcow2");
        tracing::info!(instance_id = %self.0, source = %p.source, %target, "HA restart: target chosen");
        Ok(json!({ "source": p.source, "target": target, "disk": disk }))
    }

    async fn undo(&self, app: &App, s: &StepContext<'_>) -> Result<(), StepError> {
        let (Some(source), Some(target)) = (out(s, "source"), out(s, "target")) else {
            return Ok(());
        };
        match app.store().move_instance(self.0, &target, &source).await {
            Ok(()) => Ok(()),
            Err(nimbus_store::StoreError::Conflict(_)) => Ok(()),
            Err(e) => Err(store_err(e)),
        }
    }
}

/// Longest wait for higher-ranked restarts of the same host to take their places: they
/// normally do in well under a second; past this bound (a stuck step) this one goes on.
const ORDER_WAIT: Duration = Duration::from_secs(30);

/// Waits until no restart of `source` ranked above `inst` is still unplaced (bounded by
/// [`ORDER_WAIT`]).
async fn wait_for_higher_ranked(
    app: &App,
    inst: &InstanceRecord,
    source: &str,
) -> Result<(), StepError> {
    let mine = restart_rank(inst);
    let deadline = Instant::now() + ORDER_WAIT;
    loop {
        let waiting = app
            .store()
            .unplaced_ha_restarts(source)
            .await
            .map_err(store_err)?;
        let Some(before) = waiting.iter().find(|o| restart_rank(o) < mine) else {
            return Ok(());
        };
        if Instant::now() >= deadline {
            tracing::warn!(instance_id = %inst.id, before = %before.id,
                "a higher-priority HA restart is still unplaced after {ORDER_WAIT:?}; going on");
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The shared storage both hosts use, or why the disk cannot be reached.
fn shared_dir(
    source: &nimbus_store::HostRecord,
    target: &nimbus_store::HostRecord,
) -> Result<PathBuf, StepError> {
    match (&source.shared_storage, &target.shared_storage) {
        (Some(a), Some(b)) if a == b => Ok(PathBuf::from(a)),
        (None, _) => Err(StepError::permanent(format!(
            "its disk is local to host {}, which is down: it cannot be restarted elsewhere \
             (that would start it from nothing); it runs again when {} is back",
            source.name, source.name
        ))),
        _ => Err(StepError::permanent(format!(
            "host {} does not see the shared storage of host {}",
            target.name, source.name
        ))),
    }
}

fn out(s: &StepContext<'_>, key: &str) -> Option<String> {
    s.output("choose_restart_host")
        .and_then(|o| o.get(key))
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// Defines the instance, stopped, on the target, linked to its shared disk or on the
/// snapshot replica it restarts from.
pub struct DefineOnTarget(pub Uuid);

#[async_trait]
impl Step<App> for DefineOnTarget {
    fn name(&self) -> &'static str {
        "define_on_target"
    }

    async fn action(&self, app: &App, s: &StepContext<'_>) -> Result<Value, StepError> {
        if let (Some(target), Some(snap)) = (out(s, "target"), FromSnapshot::of(s)) {
            return ha_from_snapshot::define(app, s, self.0, &target, &snap).await;
        }
        let (Some(target), Some(disk)) = (out(s, "target"), out(s, "disk")) else {
            return Err(StepError::permanent("choose_restart_host left no target"));
        };
        let inst = instance(app, self.0).await?;
        let spec = app.vm_spec(&inst).await.map_err(app_err)?;
        let agent = app.agent_of(&target).await.map_err(app_err)?;
        agent
            .cold_incoming(&ColdIncomingRequest {
                spec,
                disk: DiskTransfer::Shared {
                    path: PathBuf::from(disk),
                },
            })
            .await
            .map_err(agent_err)?;
        Ok(json!({}))
    }

    /// Deletes the target's definition (and a staged replica); a shared disk stays.
    async fn undo(&self, app: &App, s: &StepContext<'_>) -> Result<(), StepError> {
        let Some(target) = out(s, "target") else {
            return Ok(());
        };
        let keep_disk = FromSnapshot::of(s).is_none();
        let agent = app.agent_of(&target).await.map_err(app_err)?;
        agent.remove_vm(self.0, keep_disk).await.map_err(agent_err)
    }
}

/// Counts the restart on the down host (`nimbus host show`: "3 instances restarted").
pub struct CountRestart(pub Uuid);

#[async_trait]
impl Step<App> for CountRestart {
    fn name(&self) -> &'static str {
        "count_restart"
    }

    async fn action(&self, app: &App, s: &StepContext<'_>) -> Result<Value, StepError> {
        let Some(source) = out(s, "source") else {
            return Ok(json!({}));
        };
        app.store()
            .count_ha_restart(&source)
            .await
            .map_err(store_err)?;
        tracing::info!(instance_id = %self.0, %source, "HA restart done");
        Ok(json!({}))
    }
}
