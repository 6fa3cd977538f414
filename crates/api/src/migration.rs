//! Live migrations as the API shows them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// What a migration achieved (filled as it runs, final at the end).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MigrationStats {
    /// `shared` (disk on shared storage) or `mirror` (local disk copied to the target).
    pub disk_transfer: String,
    /// Pre-copy rounds (QEMU dirty-sync count).
    pub rounds: u64,
    /// Bytes of memory sent.
    pub transferred_bytes: u64,
    /// Guest memory size.
    pub total_bytes: u64,
    /// From the start of the operation to the guest seen healthy on the target.
    pub total_ms: u64,
    /// VM pause: source STOP event to target RESUME event.
    pub downtime_ms: Option<u64>,
    /// Pause the guest could see: last heartbeat at the source to first at the target.
    pub guest_pause_ms: Option<u64>,
    /// Convergence measures nimbus took, in order.
    pub escalations: Vec<String>,
}

/// A live migration of an instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MigrationView {
    /// Same as the id of its operation.
    pub id: Uuid,
    pub instance_id: Uuid,
    pub source: String,
    pub target: String,
    /// `running`, `succeeded`, `failed` or `cancelled`.
    pub state: String,
    pub max_downtime_ms: u64,
    pub stats: MigrationStats,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}
