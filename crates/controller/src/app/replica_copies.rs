//! Snapshot replicas on every controller (issue 12), the way image bytes are
//! ([`super::image_copies`]): each controller keeps its own replica store
//! ([`super::replicas`], under its blob dir); the database records which controllers hold a
//! complete replica of which snapshot (`replica_holders`, store migration 0036):
//!
//! - the controller that replicates a snapshot off its host records itself as a holder;
//! - a background pass on every controller (`background::replica_copies`) copies each
//!   replicated snapshot it lacks from a live holder over the controllers' mutual TLS
//!   (`/v1/internal/peers/replicas/{vm}/{snapshot}`, a controller certificate of the cloud's
//!   CA only): `GET` answers the chunks the VM's replicated snapshots use; this controller
//!   `POST`s the ones its store lacks and the layers it holds, and receives the same frames a
//!   restart sends a host with only those chunks and the other layers, checked frame by frame
//!   (chunk contents against their names, layers against their digests, manifests of this
//!   VM) and kept only when complete. A second snapshot of a VM thus copies only what changed
//!   since the first (as the replication from a host asks only for what the store lacks);
//! - an HA restart run by a controller that lacks the replica copies it first, so the
//!   restart works through any live controller after the one that received it is gone.

use crate::app::replicas::receive::Received;
use crate::app::{App, AppError};
use crate::ops::snapshot_move::{stall_bounded, STALL_BOUND};
use nimbus_agent_api::snapshot_move::SnapshotSetInventory;
use nimbus_store::BlobHolder;
use uuid::Uuid;

impl App {
    /// Whether this controller's store holds a complete replica of snapshot `sid` of `vm`.
    pub fn holds_replica(&self, vm: Uuid, sid: Uuid) -> bool {
        self.replicas().restore_set(vm, sid).is_ok()
    }

    /// Makes sure this controller holds a complete replica of snapshot `sid` of `vm`,
    /// copying it from a live controller that holds one; answers what was copied (`None`:
    /// held already).
    pub async fn ensure_replica(&self, vm: Uuid, sid: Uuid) -> Result<Option<Received>, AppError> {
        if self.holds_replica(vm, sid) {
            return Ok(None);
        }
        let _copying = self.replicas().copy_guard().await;
        if self.holds_replica(vm, sid) {
            return Ok(None);
        }
        let me = self.controller_id();
        // A row saying we hold it while the files are gone is wrong: drop it.
        self.store().remove_replica_holder(sid, me).await?;
        let holders = self
            .store()
            .live_replica_holders(sid, self.config().lease_ttl)
            .await?;
        let copy =
            super::image_copies::from_first_holder(&holders, me, |h| self.copy_replica(h, vm, sid));
        let tried = match copy.await {
            Ok(copied) => {
                let got = copied.value;
                tracing::info!(instance_id = %vm, snapshot_id = %sid, from = %copied.from,
                    layers = got.layers, layer_bytes = got.layer_bytes, chunks = got.chunks,
                    chunk_bytes = got.chunk_bytes, ms = copied.ms,
                    "snapshot replica copied from another controller");
                return Ok(Some(got));
            }
            Err(tried) => tried,
        };
        Err(AppError::unavailable(format!(
            "the replica of snapshot {sid} is not on this controller and {tried}"
        )))
    }

    /// Receives from `holder` what this controller lacks of the replica set of `vm`; records
    /// every snapshot it completed here.
    async fn copy_replica(
        &self,
        holder: &BlobHolder,
        vm: Uuid,
        sid: Uuid,
    ) -> Result<Received, String> {
        let url = format!(
            "{}/v1/internal/peers/replicas/{vm}/{sid}",
            holder.url.trim_end_matches('/')
        );
        let http = &self.tls().peer_http;
        let inventory: SnapshotSetInventory = http
            .get(&url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        let want = self.replicas().wanted(vm, &inventory.chunks);
        let resp = http
            .post(&url)
            .json(&want)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| e.to_string())?;
        let bytes = stall_bounded(resp.bytes_stream(), STALL_BOUND);
        let mut reader = tokio_util::io::StreamReader::new(Box::pin(bytes));
        let got = self
            .replicas()
            .receive(vm, &mut reader)
            .await
            .map_err(|e| e.to_string())?;
        if !self.holds_replica(vm, sid) {
            return Err("it sent no complete replica of the snapshot".into());
        }
        for s in got.snapshots.iter().chain(std::iter::once(&sid)) {
            self.store()
                .add_replica_holder(*s, self.controller_id())
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(got)
    }
}
