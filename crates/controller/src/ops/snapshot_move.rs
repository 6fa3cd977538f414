//! Snapshots move with their instance (issue 14, part 1): before the target defines the
//! instance (live or cold), the source's snapshot set (frozen disk layers, manifests, the
//! memory chunks the target lacks) is relayed to the target, which checks every digest and
//! stages it; the arriving instance then takes it (see `nimbus_agent_api::snapshot_move`).
//!
//! Why through the controller: both agents already trust it over their authenticated agent
//! API (moving to mutual TLS), as for a cold migration's disk; no new socket, no trust
//! between agents. The copy runs while the VM still runs on the source (before the memory
//! transfer starts), so the guest's downtime does not change; only what the target does not
//! hold is sent (chunks by digest), and with shared storage the layers are not sent at all.
//! Nothing is deleted on the source before the commit: its copy goes with the source VM in
//! `cleanup_source`; a failed move deletes the target's copy with the target VM.

use super::steps::{agent_err, app_err};
use crate::app::App;
use nimbus_agent_api::{ExportSnapshotSet, MissingChunks};
use nimbus_ops::{StepContext, StepError};
use serde_json::{json, Value};
use uuid::Uuid;

/// How the snapshot set of one move goes.
pub(super) struct SnapshotMove<'a> {
    pub instance: Uuid,
    pub source: &'a str,
    pub target: &'a str,
    /// Both hosts see the disk layers on shared storage: they are not copied.
    pub shared: bool,
    /// A live migration: the top layer (the guest writes it) moves by the disk mirror.
    pub live: bool,
}

impl SnapshotMove<'_> {
    /// Copies the set; `Value::Null` when the instance has no snapshots (nor layers).
    pub async fn copy(&self, app: &App, s: &StepContext<'_>) -> Result<Value, StepError> {
        let source = app.agent_of(self.source).await.map_err(app_err)?;
        let target = app.agent_of(self.target).await.map_err(app_err)?;
        let inventory = source
            .snapshot_set(self.instance)
            .await
            .map_err(agent_err)?;
        if inventory.is_empty() {
            return Ok(Value::Null);
        }
        let missing = target
            .missing_chunks(&MissingChunks {
                chunks: inventory.chunks.clone(),
            })
            .await
            .map_err(agent_err)?;
        s.progress(&format!(
            "copying {} snapshots from {} to {}: {} of {} memory chunks{}",
            inventory.snapshots,
            self.source,
            self.target,
            missing.chunks.len(),
            inventory.chunks.len(),
            if self.shared {
                ", disk layers on shared storage"
            } else {
                " and the disk layers"
            }
        ))
        .await;
        let req = ExportSnapshotSet {
            chunks: missing.chunks,
            layers: !self.shared,
            live: self.live,
        };
        let stream = source
            .export_snapshot_set(self.instance, &req)
            .await
            .map_err(agent_err)?;
        let body = reqwest::Body::wrap_stream(stream.bytes_stream());
        let got = target
            .import_snapshot_set(self.instance, body)
            .await
            .map_err(agent_err)?;
        tracing::info!(instance_id = %self.instance, source = self.source, target = self.target, ?got, "snapshot set copied");
        Ok(json!({
            "snapshots": got.snapshots,
            "layers": got.layers,
            "layer_bytes": got.layer_bytes,
            "chunks_sent": got.chunks,
            "chunks_skipped": inventory.chunks.len() as u64 - got.chunks,
            "chunk_bytes": got.chunk_bytes,
        }))
    }
}

/// Bytes a recorded copy sent (0 for none).
pub(super) fn copied_bytes(v: Option<&Value>) -> u64 {
    let get = |k: &str| {
        v.and_then(|v| v.get(k))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    get("layer_bytes") + get("chunk_bytes")
}
