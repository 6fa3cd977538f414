//! HA restart of an instance whose disk was local to the dead host, from its latest
//! replicated snapshot (issue 14, part 4; the replicas: [`crate::app::replicas`]).
//!
//! ```text
//! choose_restart_host   the latest snapshot with a complete replica; any host with room
//! define_on_target      target: which chunks do you lack? ─▶ the replica's frames (layers,
//!                       manifests, those chunks, a fresh top on the snapshot's layer),
//!                       checked and staged ─▶ cold define: the VM takes the staged set
//! boot                  restore the snapshot on the target (memory, CPU, devices)
//! wait_ready            the guest runs
//! record_restart        the snapshots follow the instance to the target; those without a
//!                       replica (not on the target) go `error`; the note for the user
//! ```
//! What was lost is said, not hidden: the instance's reason (`instance show`) and the
//! operation's output read "restarted from snapshot S taken at T on host H; changes after it
//! are lost".

use super::snapshot_move::{stall_bounded, STALL_BOUND};
use super::steps::{agent_err, app_err, instance, store_err};
use crate::app::App;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use nimbus_agent_api::{
    ColdIncomingRequest, DiskTransfer, MissingChunks, RestoreRequest, SnapshotSetPart,
};
use nimbus_api::OperationKind;
use nimbus_ops::{Step, StepContext, StepError};
use serde_json::{json, Value};
use uuid::Uuid;

/// The snapshot a restart uses, as `choose_restart_host` records it.
pub struct FromSnapshot {
    pub id: Uuid,
    pub name: String,
    pub taken_at: DateTime<Utc>,
}

impl FromSnapshot {
    /// Read back from `choose_restart_host`'s output (`None`: a restart from a shared disk).
    pub fn of(s: &StepContext<'_>) -> Option<Self> {
        let out = s.output("choose_restart_host")?.get("snapshot")?;
        Some(Self {
            id: out.get("id")?.as_str()?.parse().ok()?,
            name: out.get("name")?.as_str()?.to_string(),
            taken_at: out.get("taken_at")?.as_str()?.parse().ok()?,
        })
    }

    pub fn to_json(&self) -> Value {
        json!({ "id": self.id, "name": self.name, "taken_at": self.taken_at })
    }

    /// What the user is told.
    pub fn note(&self, source: &str) -> String {
        format!(
            "restarted from snapshot {} taken at {} on host {source}; changes after it are lost",
            self.name,
            self.taken_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )
    }
}

/// The latest replicated snapshot of `instance`, or why it cannot restart elsewhere.
pub async fn latest_replica(
    app: &App,
    instance: Uuid,
    source: &str,
) -> Result<FromSnapshot, StepError> {
    let snap = app
        .store()
        .latest_replicated_snapshot(instance)
        .await
        .map_err(store_err)?
        .ok_or_else(|| {
            StepError::permanent(format!(
                "its disk is local to host {source}, which is down, and it has no snapshot \
                 replicated to the controller: it cannot be restarted elsewhere (that would \
                 start it from nothing); it runs again when {source} is back"
            ))
        })?;
    Ok(FromSnapshot {
        id: snap.id,
        name: snap.name,
        taken_at: snap.created_at,
    })
}

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
            .fail_unreplicated_snapshots(self.0)
            .await
            .map_err(store_err)?;
        store
            .set_current_snapshot(self.0, Some(snap.id))
            .await
            .map_err(store_err)?;
        let note = snap.note(&source);
        tracing::info!(instance_id = %self.0, %source, %target, snapshots_lost = lost, "{note}");
        Ok(json!({ "note": note, "snapshots_without_replica": lost }))
    }
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
