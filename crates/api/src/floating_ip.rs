//! Floating IPs: addresses of the operator's external pool that a project allocates and
//! attaches to one of its instances (1:1 NAT to the instance's first NIC, on its host), so the
//! instance is reachable from outside the cloud.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A floating IP as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FloatingIpView {
    /// The public address, e.g. `10.249.7.192`.
    pub address: String,
    pub project: String,
    /// The instance it is attached to (by name), if any.
    pub instance: Option<String>,
    /// The private address it is translated to (the instance's first NIC), if attached.
    pub private_ip: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// Body of `POST /v1/floating-ips/{address}/attach`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AttachFloatingIp {
    /// An instance of the same project, by name or id.
    pub instance: String,
}
