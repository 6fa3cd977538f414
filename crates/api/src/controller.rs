//! Controllers: the processes serving the API, several of which may share one PostgreSQL.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A live controller (its heartbeat is younger than the lease TTL).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ControllerView {
    /// New at every start of the process.
    pub id: uuid::Uuid,
    /// Its first listen address.
    pub url: String,
    /// The nimbus version it runs.
    pub version: String,
    pub started_at: DateTime<Utc>,
    /// Milliseconds since its last heartbeat (database clock).
    pub heartbeat_age_ms: u64,
    /// Operations it owns that have not ended.
    pub operations: u64,
    /// The background tasks it runs for the whole cloud (one controller at a time each:
    /// `autoscaler`, `reconciler`, `host_liveness`, `firewall_sync`, `retention`).
    #[serde(default)]
    pub tasks: Vec<String>,
    /// The controller that answered this request.
    pub this: bool,
}
