//! Host inventory and registration.

use serde::{Deserialize, Serialize};

/// How a host runs guests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accelerator {
    /// Hardware virtualization (a real tiny boot succeeded).
    Kvm,
    /// Software emulation.
    Tcg,
}

impl std::fmt::Display for Accelerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Accelerator::Kvm => "kvm",
            Accelerator::Tcg => "tcg",
        })
    }
}

/// What a host offers, as reported by its agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostInventory {
    /// Host name, unique in the cloud.
    pub name: String,
    pub cpus: u32,
    pub memory_mib: u64,
    /// Space available for instance disks where the agent keeps them (its shared storage,
    /// else its state directory).
    pub disk_gib: u64,
    pub accelerator: Accelerator,
    /// e.g. "10.0.2".
    pub qemu_version: String,
    pub agent_version: String,
    /// Directory of shared storage (e.g. an NFS mount at the same path on every host) where
    /// this agent keeps instance disks; hosts reporting the same one migrate without copying
    /// disks. `None`: disks are local to the host.
    #[serde(default)]
    pub shared_storage: Option<String>,
}

/// Sent by an agent to the controller at start and then periodically.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisterHost {
    /// Base URL the controller reaches the agent at, e.g. `http://10.88.0.11:7701`.
    pub agent_url: String,
    pub inventory: HostInventory,
}

/// The controller's answer to a registration: what the agent must set up on its host.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RegisterResponse {
    pub network: Option<NetworkConfig>,
}

/// The cloud's default network: one bridge per host, joined by VXLAN.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkConfig {
    /// VXLAN network identifier.
    pub vni: u32,
    /// Underlay addresses of the other hosts (VXLAN peers).
    pub peers: Vec<String>,
    /// The network's prefix, e.g. `10.200.0.0/16`.
    pub cidr: String,
}
