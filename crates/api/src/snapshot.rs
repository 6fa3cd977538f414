//! Snapshots: checkpoints of an instance (CPU, memory and disk, or disk only), kept as a tree.
//!
//! ```text
//!  create ─▶ creating ─▶ available ◀─────────┐
//!               │          │  restore ▶ restoring
//!               ▼          └─ delete ▶ deleting ▶ gone
//!             (failure: the row is removed, nothing is left behind)
//! ```
//! Each instance has a *current* snapshot: the one its state descends from (the last one
//! taken, or the last one restored). A new snapshot's parent is the current one, so
//! snapshotting after a restore starts a new branch.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// Lifecycle state of a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotState {
    /// Being taken.
    Creating,
    /// Complete; can be restored, cloned from and deleted.
    Available,
    /// Its instance is being restored to it.
    Restoring,
    /// Being deleted.
    Deleting,
    /// An operation on it ended badly; see the operation's error.
    Error,
}

impl SnapshotState {
    /// The state as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotState::Creating => "creating",
            SnapshotState::Available => "available",
            SnapshotState::Restoring => "restoring",
            SnapshotState::Deleting => "deleting",
            SnapshotState::Error => "error",
        }
    }

    /// Parses a stored state.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "creating" => SnapshotState::Creating,
            "available" => SnapshotState::Available,
            "restoring" => SnapshotState::Restoring,
            "deleting" => SnapshotState::Deleting,
            "error" => SnapshotState::Error,
            _ => return None,
        })
    }
}

impl std::fmt::Display for SnapshotState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A snapshot as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SnapshotView {
    pub id: Uuid,
    /// Unique in the project.
    pub name: String,
    /// Name of the instance it was taken of.
    pub instance: String,
    pub instance_id: Uuid,
    /// Name of the parent snapshot in the instance's tree (none for a root).
    pub parent: Option<String>,
    pub parent_id: Option<Uuid>,
    /// Memory and CPU/device state are included (`false`: disk only).
    pub memory: bool,
    pub state: SnapshotState,
    /// The host that stores it (snapshots live on their instance's host).
    pub host: String,
    /// How long the VM's vCPUs were stopped to take it, in milliseconds (all its pauses,
    /// summed: one, unless an attempt had to be undone and taken again).
    pub vm_pause_ms: f64,
    /// What the snapshot occupies on its host: its disk layer plus the memory it added.
    pub stored_bytes: u64,
    /// Bytes of its disk layer (what the guest wrote since the previous snapshot).
    pub disk_layer_bytes: u64,
    /// Guest memory captured (logical size; shared pages are stored once per host).
    pub memory_bytes: u64,
    /// Memory bytes this snapshot added to its host's store (not shared with others).
    pub memory_new_bytes: u64,
    /// The instance's state descends from this snapshot (the last taken or restored).
    pub current: bool,
    pub project: String,
    /// The operation acting on it, if any.
    pub operation: Option<Uuid>,
    /// When its replica in the controller's store was complete: an HA restart of an
    /// instance with a local disk restores the latest replicated snapshot on another host.
    /// Only snapshots of `--ha restart` instances with a local disk are replicated.
    #[serde(default)]
    pub replicated_at: Option<DateTime<Utc>>,
    /// Bytes its replication sent to the controller (what the store lacked; 0: none).
    #[serde(default)]
    pub replica_bytes: u64,
    /// Which live controllers hold its replica (shown by `GET /v1/snapshots/{snapshot}` for
    /// a replicated snapshot; absent in listings): an HA restart can use it only while at
    /// least one does, and every controller copies it within seconds (docs/hosts.md).
    #[serde(default)]
    pub replicas: Option<ReplicaCopies>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Where a snapshot's replica is: every controller keeps its own complete copy, copied from
/// another within seconds of the replication. While `held` is 0 an HA restart cannot use
/// this snapshot (it falls back to an older one that a live controller holds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReplicaCopies {
    /// Live controllers holding a complete replica.
    pub held: u32,
    /// Live controllers in all.
    pub controllers: u32,
}

/// Body of `POST /v1/snapshots`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CreateSnapshot {
    /// Instance (id or name) to snapshot.
    pub instance: String,
    /// Name of the snapshot; default `<instance>-<yyyymmdd-hhmmss>` (UTC).
    #[serde(default)]
    pub name: Option<String>,
    /// Leave memory out: only the disk is captured (required for a stopped instance).
    #[serde(default)]
    pub disk_only: bool,
}

/// Query of `GET /v1/snapshots`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SnapshotFilter {
    /// Only the snapshots of this instance (id or name).
    #[serde(default)]
    pub instance: Option<String>,
}

/// Output of the `restore` step of a `snapshot_restore` operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SnapshotRestored {
    pub snapshot_id: Uuid,
    /// From the request to the VM running again (includes checksum validation).
    pub running_ms: u64,
    /// From the request to the guest's first heartbeat after the restore, when one came.
    pub first_heartbeat_ms: Option<u64>,
}

/// Output of the `delete_on_host` step of a `snapshot_delete` operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SnapshotDeleted {
    pub snapshot_id: Uuid,
    /// Bytes removed from the host.
    pub freed_bytes: u64,
}
