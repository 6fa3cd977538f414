//! Moving a VM's snapshots with it (live or cold migration, drain).
//!
//! ```text
//!  controller                    source agent                   target agent
//!  GET  /vms/{id}/snapshot-set ─▶ SnapshotSetInventory
//!        (chunk digests, whether the disk is a chain of layers)
//!  POST /chunks/missing ─────────────────────────────────────────▶ MissingChunks
//!  POST /vms/{id}/snapshot-set/export ─▶ framed stream: frozen disk
//!        ExportSnapshotSet               layers, manifests, only the
//!                                        missing chunks, the top
//!  PUT  /vms/{id}/snapshot-set ──────── the same bytes, relayed ──▶ checks every digest,
//!                                                                 stages it in arriving/<id>
//!  then the usual incoming (live) or cold define: the VM arriving takes the staged set
//!  (layers rebased onto this host's paths, a fresh top on them for a live move).
//! ```
//! A live migration sends the set in two parts ([`SnapshotSetPart`]): the disk layers before
//! the target QEMU starts (it opens its disk on them), then the manifests and memory chunks
//! in parallel with the memory transfer; the target installs that second part into the VM
//! already defined there. A cold migration sends everything at once.
//! The controller relays the bytes, as it relays a cold migration's disk: both agents
//! already trust it, they need no trust in each other. Nothing leaves the source before the
//! migration's commit: the source's copy goes with the VM when the controller deletes it.

use serde::{Deserialize, Serialize};

/// What the source holds of a VM's snapshots.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SnapshotSetInventory {
    /// Complete snapshots of the VM on this host.
    pub snapshots: u32,
    /// The VM's disk is a chain of layers (it has, or had, snapshots): the chain must move.
    pub layered: bool,
    /// BLAKE3 digests (hex) of every memory chunk its snapshots use, once each.
    pub chunks: Vec<String>,
}

impl SnapshotSetInventory {
    /// Whether anything of snapshots has to move with the VM.
    pub fn is_empty(&self) -> bool {
        self.snapshots == 0 && !self.layered
    }
}

/// Which chunks a host lacks (asked with digests, answered with the absent ones).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct MissingChunks {
    pub chunks: Vec<String>,
}

/// Which part of a snapshot set one stream carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotSetPart {
    /// Everything: layers, manifests, chunks, top (a cold move).
    #[default]
    All,
    /// The disk layers and the top only: what the target QEMU needs to open its disk.
    Disk,
    /// The manifests and the chunks only: sent while the memory moves, installed into the
    /// VM already defined on the target (or staged for it when it is not yet).
    Memory,
}

/// The query of `PUT /vms/{id}/snapshot-set`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ImportSnapshotSet {
    #[serde(default)]
    pub part: SnapshotSetPart,
}

/// What the source sends of a VM's snapshots.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ExportSnapshotSet {
    /// The part of the set this stream carries.
    #[serde(default)]
    pub part: SnapshotSetPart,
    /// Chunks the target lacks (others are not sent).
    pub chunks: Vec<String>,
    /// Send the disk layers (false with shared storage: both hosts see the same files).
    pub layers: bool,
    /// Live migration: the top layer (which the guest writes) is not sent; the target makes
    /// a fresh top on the same backing, filled by the disk mirror. Cold: the top is sent.
    pub live: bool,
}

/// What the target received and checked.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ImportedSnapshotSet {
    pub snapshots: u32,
    pub layers: u32,
    pub layer_bytes: u64,
    pub chunks: u64,
    pub chunk_bytes: u64,
}
