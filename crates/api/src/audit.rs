//! The audit log: every mutating API call, who made it and how it ended.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// One mutating API call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    pub id: Uuid,
    pub at: DateTime<Utc>,
    /// The token used; none when authentication failed.
    pub token_id: Option<String>,
    pub token_name: Option<String>,
    /// The project the call acted in.
    pub project: Option<String>,
    pub method: String,
    /// The concrete path called.
    pub path: String,
    /// The route, e.g. `POST /v1/instances/{instance}/stop`.
    pub action: String,
    /// The resource acted on (path parameter or the `name` of a created resource).
    pub target: Option<String>,
    /// HTTP status answered.
    pub status: u16,
    pub client_ip: Option<String>,
}
