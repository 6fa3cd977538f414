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
    /// vCPU overcommit this host accepts (`agent --cpu-allocation-ratio`); `None`: the
    /// controller's default.
    #[serde(default)]
    pub cpu_allocation_ratio: Option<f64>,
    /// Memory overcommit this host accepts (`agent --ram-allocation-ratio`); `None`: the
    /// controller's default.
    #[serde(default)]
    pub ram_allocation_ratio: Option<f64>,
    /// Kernel same-page merging on this host; `None` where the kernel has no KSM.
    #[serde(default)]
    pub ksm: Option<KsmStats>,
    /// The host's cache of uploaded images.
    #[serde(default)]
    pub image_cache: Option<crate::ImageCacheReport>,
    /// What the agent can do beyond the base protocol ([`capability`]); an agent older than
    /// this field sends none. The controller refuses up front (or skips the host) an
    /// operation that needs one the agent lacks, instead of failing it midway.
    #[serde(default)]
    pub capabilities: Vec<String>,
}

/// Names of the capabilities an agent reports in [`HostInventory::capabilities`]. Strings,
/// not an enum: a controller reads an inventory with names it does not know yet.
pub mod capability {
    /// Sends and receives a VM's snapshots with the VM, in a live or cold migration (the
    /// snapshot-set routes of [`crate::snapshot_move`]).
    pub const SNAPSHOT_MOVE: &str = "snapshot-move";

    /// Every capability of this version: what its agent reports.
    pub fn all() -> Vec<String> {
        vec![SNAPSHOT_MOVE.to_string()]
    }
}

impl HostInventory {
    /// The agent reported capability `name`.
    pub fn can(&self, name: &str) -> bool {
        self.capabilities.iter().any(|c| c == name)
    }
}

/// Kernel same-page merging, from `/sys/kernel/mm/ksm/`. The counters are the kernel's,
/// machine-wide: hosts that are network namespaces of one machine all report the same.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KsmStats {
    /// `run`: 1 merging, 0 stopped, 2 unmerged.
    pub run: u32,
    /// Shared pages in use (each stands for several identical guest pages).
    pub pages_shared: u64,
    /// Guest pages that point at a shared page: the saving, in pages.
    pub pages_sharing: u64,
    /// Pages checked but unique so far.
    pub pages_unshared: u64,
    /// Size of a page in bytes.
    pub page_size: u64,
}

impl KsmStats {
    /// Memory saved by merging, in bytes (`pages_sharing` x page size).
    pub fn saved_bytes(&self) -> u64 {
        self.pages_sharing.saturating_mul(self.page_size)
    }
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
