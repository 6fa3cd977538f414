//! HA restart of an instance whose disk was local to the dead host, from the newest snapshot
//! whose replica a live controller holds (issue 14, part 4; the choice:
//! [`super::ha_replica_choice`]; the replicas: [`crate::app::replicas`]).
//!
//! ```text
//! choose_restart_host   the newest snapshot restorable from a live controller (copied to
//!                       this one if need be); any host with room
//! define_on_target      target: which chunks do you lack? ─▶ the replica's frames (layers,
//!                       manifests, those chunks, a fresh top on the snapshot's layer),
//!                       checked and staged ─▶ cold define: the VM takes the staged set
//! boot                  restore the snapshot on the target (memory, CPU, devices)
//! wait_ready            the guest runs
//! record_restart        the snapshots follow the instance to the target; those not sent
//!                       with the replica (not on the target) go `error`; the note for the user
//! ```
//! What was lost is said, not hidden: the instance's reason (`instance show`) and the
//! operation's output read "restarted from snapshot S taken at T on host H; changes after it
//! are lost", and name each newer snapshot that could not be used and why.

use super::ha_replica_choice::FromSnapshot;
use super::snapshot_move::{stall_bounded, STALL_BOUND};
use super::steps::{agent_err, app_err, instance, store_err};
use crate::app::App;
use async_trait::async_trait;
use nimbus_agent_api::{
    ColdIncomingRequest, DiskTransfer, MissingChunks, RestoreRequest, SnapshotSetPart,
};
use nimbus_api::OperationKind;
use nimbus_ops::{Step, StepContext, StepError};
use serde_json::{json, Value};
use uuid::Uuid;

/// Sends the replica to `target` and defines the instance there, stopped, on it.
pub async fn define(
    app: &App,
    s: &StepContext<'_>,
    id: Uuid,
    target: &str,
    snap: &FromSnapshot,
) -> Result<Value, StepError> {
    // The replica may have been received by another controller (dead by now): copied here
    // first from any live holder (a transient failure while some holder may yet answer).
    app.ensure_replica(id, snap.id).await.map_err(app_err)?;
    let set = app
        .replicas()
        .restore_set(id, snap.id)
        .map_err(|e| StepError::permanent(e.to_string()))?;
    let agent = app.agent_of(target).await.map_err(app_err)?;
    let missing = agent
        .missing_chunks(&MissingChunks {
            chunks: set.chunks.clone(),
        })
        .await
        .map_err(agent_err)?;
    s.progress(&format!(
        "sending snapshot {} from the controller to {target}: {} of {} memory chunks, {} \
         bytes of disk layers",
        snap.name,
        missing.chunks.len(),
        set.chunks.len(),
        set.layer_bytes()
    ))
    .await;
    let (chunks_total, layer_bytes) = (set.chunks.len(), set.layer_bytes());
    let sent = set.snapshots.clone();
    let stream = app.replicas().stream(set, missing.chunks);
    let body = reqwest::Body::wrap_stream(stall_bounded(stream, STALL_BOUND));
    let got = agent
        .import_snapshot_set(id, SnapshotSetPart::All, body)
        .await
        .map_err(agent_err)?;
    let inst = instance(app, id).await?;
    let spec = app.vm_spec(&inst).await.map_err(app_err)?;
    agent
        .cold_incoming(&ColdIncomingRequest {
            spec,
            disk: DiskTransfer::Mirror,
        })
        .await
        .map_err(agent_err)?;
    tracing::info!(instance_id = %id, %target, snapshot = %snap.name, ?got, "HA restart: replica installed on the target");
    Ok(json!({
        "snapshot": snap.name,
        "snapshots_sent": sent,
        "layer_bytes": layer_bytes,
        "chunks_sent": got.chunks,
        "chunks_skipped": chunks_total as u64 - got.chunks.min(chunks_total as u64),
        "chunk_bytes": got.chunk_bytes,
    }))
}

/// Runs the instance on the target: restored from the snapshot, or booted from its disk.
pub struct RestoreOrBoot(pub Uuid);

#[async_trait]
impl Step<App> for RestoreOrBoot {
    fn name(&self) -> &'static str {
        "boot"
    }

    async fn action(&self, app: &App, s: &StepContext<'_>) -> Result<Value, StepError> {
        let Some(snap) = FromSnapshot::of(s) else {
            return super::steps::Boot(self.0).action(app, s).await;
        };
        s.progress(&format!("restoring snapshot {}", snap.name))
            .await;
        let inst = instance(app, self.0).await?;
        let host = inst
            .host
            .ok_or_else(|| StepError::permanent("the instance has no host"))?;
        let done = app
            .agent_of(&host)
            .await
            .map_err(app_err)?
            .restore_snapshot(self.0, snap.id, &RestoreRequest { step_clock: true })
            .await
            .map_err(agent_err)?;
        Ok(json!({ "restored": snap.name, "running_ms": done.running_ms }))
    }
}

/// After a restart from a snapshot: the snapshot records follow the instance (those without
/// a replica are not on the new host: `error`), the restored one is current; the note.
pub struct RecordRestart(pub Uuid);

#[async_trait]
impl Step<App> for RecordRestart {
    fn name(&self) -> &'static str {
        "record_restart"
    }

    async fn action(&self, app: &App, s: &StepContext<'_>) -> Result<Value, StepError> {
        let Some(snap) = FromSnapshot::of(s) else {
            return Ok(json!({}));
        };
        let out = s.output("choose_restart_host");
        let get = |k: &str| {
            out.and_then(|o| o.get(k))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let (source, target) = (get("source"), get("target"));
        let store = app.store();
        store
            .move_snapshots(self.0, &target)
            .await
            .map_err(store_err)?;
        let lost = store
            .fail_snapshots_not_sent(self.0, &sent_snapshots(app, s, self.0, snap.id))
            .await
            .map_err(store_err)?;
        store
            .set_current_snapshot(self.0, Some(snap.id))
            .await
            .map_err(store_err)?;
        let note = snap.note(&source);
        tracing::info!(instance_id = %self.0, %source, %target, snapshots_lost = lost, "{note}");
        Ok(json!({ "note": note, "snapshots_not_on_new_host": lost }))
    }
}

/// The snapshots `define_on_target` sent the new host with the replica (recomputed from
/// this controller's replica for an operation recorded without them).
fn sent_snapshots(app: &App, s: &StepContext<'_>, vm: Uuid, restored: Uuid) -> Vec<Uuid> {
    let recorded = s
        .output("define_on_target")
        .and_then(|o| o.get("snapshots_sent"))
        .and_then(|v| serde_json::from_value::<Vec<Uuid>>(v.clone()).ok());
    recorded.unwrap_or_else(|| {
        app.replicas()
            .restore_set(vm, restored)
            .map(|set| set.snapshots)
            .unwrap_or_else(|_| vec![restored])
    })
}

/// The reason an instance keeps after a successful operation: for an HA restart from a
/// snapshot, what was lost; otherwise none.
pub async fn success_note(app: &App, op: Uuid, kind: OperationKind) -> Option<String> {
    if kind != OperationKind::InstanceHaRestart {
        return None;
    }
    let view = app
        .store()
        .get_operation(&nimbus_store::Scope::All, op)
        .await
        .ok()?;
    view.steps
        .iter()
        .find(|st| st.name == "record_restart")?
        .output
        .as_ref()?
        .get("note")?
        .as_str()
        .map(str::to_string)
}
