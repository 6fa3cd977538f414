//! Tenant networks: private layer-2 segments of a project, each with its own VXLAN segment id
//! (VNI) and IPv4 CIDR. CIDRs of one project never overlap; those of different projects may.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The network every project gets at creation, and every instance joins unless told otherwise.
pub const DEFAULT_NETWORK: &str = "default";

/// A network as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NetworkView {
    pub name: String,
    pub project: String,
    /// IPv4 prefix of the network, e.g. `10.10.0.0/24`.
    pub cidr: String,
    /// The network's gateway address (the first host address of the CIDR).
    pub gateway: String,
    /// Segment id of the network on the wire between hosts (unique in the cloud).
    pub vni: u32,
    /// Instance ports on the network.
    pub ports: u64,
    pub created_at: DateTime<Utc>,
}

/// Body of `POST /v1/networks`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CreateNetwork {
    pub name: String,
    /// A private IPv4 prefix (10/8, 172.16/12, 192.168/16) from /8 to /28, not overlapping
    /// another network of the project.
    pub cidr: String,
}

/// One NIC of an instance: its network and its address there (kept across migrations).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NicView {
    pub network: String,
    /// Address with the network's prefix length, e.g. `10.10.0.20/24`.
    pub ip: String,
    pub mac: String,
}
