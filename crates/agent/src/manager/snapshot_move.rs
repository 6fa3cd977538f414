//! The manager's side of moving snapshots with their VM (see
//! [`crate::snapshot::moving`]).

use super::Manager;
use crate::error::{Error, Result};
use crate::snapshot::moving::{export, import, install};
use axum::body::Bytes;
use futures::channel::mpsc;
use nimbus_agent_api::{
    ExportSnapshotSet, ImportedSnapshotSet, MissingChunks, SnapshotSetInventory, SnapshotSetPart,
    VmRunState,
};
use tokio::io::AsyncRead;
use uuid::Uuid;

impl Manager {
    /// What VM `id`'s snapshots are made of.
    pub fn snapshot_set(&self, id: Uuid) -> Result<SnapshotSetInventory> {
        export::inventory(self.get(id)?.dir())
    }

    /// The stream of VM `id`'s snapshot set. A cold move sends the top layer too, so the VM
    /// must be stopped (its top no longer changes).
    pub async fn export_snapshot_set(
        &self,
        id: Uuid,
        req: &ExportSnapshotSet,
    ) -> Result<mpsc::Receiver<std::io::Result<Bytes>>> {
        let vm = self.get(id)?;
        let state = vm.status().state;
        if !req.live && !matches!(state, VmRunState::Stopped | VmRunState::Crashed) {
            return Err(Error::Conflict(format!(
                "VM {id} is {state:?}: its top disk layer moves cold only while it is stopped"
            )));
        }
        export::stream(vm.dir(), &self.snapshots, req).await
    }

    /// Receives `part` of the snapshot set of VM `id`, arriving here. The memory part of a
    /// live move comes beside the disk part and the VM's definition: it is staged apart, and
    /// installed into the VM once both are here, by whichever comes last (here, or the
    /// define), under the lifecycle lock, so that a concurrent removal of the VM cannot leave
    /// its manifests behind.
    pub async fn import_snapshot_set<R: AsyncRead + Unpin>(
        &self,
        id: Uuid,
        part: SnapshotSetPart,
        body: &mut R,
    ) -> Result<ImportedSnapshotSet> {
        if part != SnapshotSetPart::Memory && self.get(id).is_ok() {
            // A retried move: the VM took its set when it was defined here.
            tracing::info!(instance_id = %id, "snapshot set already installed");
            return Ok(ImportedSnapshotSet::default());
        }
        let got = import::receive(&self.snapshots, id, part, body).await?;
        if part == SnapshotSetPart::Memory {
            let _serial = self.lifecycle.lock().await;
            if let Ok(vm) = self.get(id) {
                let arriving = self.snapshots.arriving_memory(id);
                if let Err(e) = install::install(vm.dir(), &arriving).await {
                    let _ = arriving.remove();
                    return Err(e);
                }
            }
        }
        Ok(got)
    }

    /// Which of `chunks` this host lacks.
    pub fn missing_chunks(&self, chunks: &MissingChunks) -> Result<MissingChunks> {
        let store = self.snapshots.chunks();
        let mut missing = Vec::new();
        for c in &chunks.chunks {
            if !crate::snapshot::chunks::is_digest(c) {
                return Err(Error::BadRequest(format!("{c:?} is not a chunk digest")));
            }
            if !store.has(c) {
                missing.push(c.clone());
            }
        }
        Ok(MissingChunks { chunks: missing })
    }
}
