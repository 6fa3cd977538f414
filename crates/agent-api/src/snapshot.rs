//! Checkpoints of a VM on its host: copy-on-write snapshots of CPU, memory and disk.
//!
//! ```text
//! POST   /vms/{id}/snapshots                 SnapshotRequest -> SnapshotResult
//!        pause the VM for milliseconds: freeze the disk layer (external qcow2 snapshot),
//!        start a background memory snapshot (write-protected copy-on-write), resume; memory
//!        is written while the guest runs on, then split into content-addressed chunks
//!        shared with every other snapshot on the host. Idempotent per snapshot id.
//! POST   /vms/{id}/snapshots/{sid}/restore   RestoreRequest  -> RestoreResult
//!        validate the manifest and every checksum first (the VM is untouched on failure),
//!        then replace the running QEMU by one resumed from the snapshot.
//! DELETE /vms/{id}/snapshots/{sid}           -> DeleteSnapshotResult
//!        merge the snapshot's disk layer into its children, drop chunks no one else uses.
//!        Idempotent: an unknown snapshot is already deleted.
//! POST   /vms/{id}/clone                     CloneRequest    -> VmStatus
//!        a new VM `id` on this host that resumes from snapshot `sid` of `source_vm`, with the
//!        new identity of its spec (name, MAC, IP); its disk is a standalone copy.
//! ```
//! The snapshot tree is the controller's: an agent only needs each snapshot's id; the disk
//! layers form the same tree on the host (a snapshot's layer is the parent of the layers
//! written after it).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Take a snapshot of a running or stopped VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotRequest {
    /// Chosen by the controller before the call, so a retry finds the same snapshot.
    pub snapshot_id: Uuid,
    /// Include memory and CPU/device state (only for a running VM); `false` for disk only.
    pub memory: bool,
}

/// What a snapshot cost, as measured on the host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotResult {
    pub snapshot_id: Uuid,
    /// Memory and device state are included.
    pub memory: bool,
    /// How long the VM's vCPUs were stopped (QEMU STOP to RESUME events), in milliseconds,
    /// summed over the pauses of the snapshot (with those of an attempt undone and taken
    /// again); 0 for a stopped VM.
    pub vm_pause_ms: f64,
    /// From request to snapshot complete on disk, in milliseconds.
    pub total_ms: u64,
    /// Bytes of the snapshot's disk layer: what the guest wrote since the previous snapshot.
    pub disk_layer_bytes: u64,
    /// Non-zero guest memory captured (the logical size of the memory image).
    pub memory_bytes: u64,
    /// Bytes of memory chunks this snapshot added to the host's chunk store (chunks already
    /// stored by other snapshots are shared, not counted again).
    pub memory_new_bytes: u64,
    /// What the snapshot occupies: `disk_layer_bytes + memory_new_bytes`.
    pub stored_bytes: u64,
    /// Attempts undone and taken again (the guest wrote to its disk after QEMU's pause for
    /// the memory image; their pauses are in `vm_pause_ms`).
    #[serde(default)]
    pub attempts_undone: u32,
}

/// Restore a VM to a snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct RestoreRequest {
    /// The guest's clock is stepped to the host's time after the restore (default true).
    #[serde(default = "yes")]
    pub step_clock: bool,
}

fn yes() -> bool {
    true
}

/// How a restore went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RestoreResult {
    pub snapshot_id: Uuid,
    /// From request to the VM running again, in milliseconds (includes validation).
    pub running_ms: u64,
    /// From request to the guest's first heartbeat after the restore, when one arrived.
    pub first_heartbeat_ms: Option<u64>,
    /// The VM's status after the restore.
    pub status: crate::VmStatus,
}

/// What deleting a snapshot freed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeleteSnapshotResult {
    pub snapshot_id: Uuid,
    /// Bytes removed from the host (memory chunks no other snapshot uses, the disk layer
    /// once merged into its children).
    pub freed_bytes: u64,
}

/// Start a new VM from another VM's snapshot on this host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CloneRequest {
    /// The new VM: its own id, name, NICs (new MAC and IP); vCPUs and memory must equal the
    /// source's.
    pub spec: crate::VmSpec,
    pub source_vm: Uuid,
    pub snapshot_id: Uuid,
}
