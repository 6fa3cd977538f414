//! The manager's side of moving snapshots with their VM (see
//! [`crate::snapshot::moving`]).

use super::Manager;
use crate::error::{Error, Result};
use crate::snapshot::moving::{export, import};
use axum::body::Bytes;
use futures::channel::mpsc;
use nimbus_agent_api::{
    ExportSnapshotSet, ImportedSnapshotSet, MissingChunks, SnapshotSetInventory, VmRunState,
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

    /// Receives the snapshot set of VM `id`, about to arrive here.
    pub async fn import_snapshot_set<R: AsyncRead + Unpin>(
        &self,
        id: Uuid,
        body: &mut R,
    ) -> Result<ImportedSnapshotSet> {
        if self.get(id).is_ok() {
            // A retried move: the VM took its set when it was defined here.
            tracing::info!(instance_id = %id, "snapshot set already installed");
            return Ok(ImportedSnapshotSet::default());
        }
        import::receive(&self.snapshots, id, body).await
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
