//! Hosts: the physical machines of the pool.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Whether the controller hears from a host's agent (timeouts in docs/hosts.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HostState {
    /// Its agent reports.
    Up,
    /// No report for a short while (10 s): takes no new instances; its instances are left
    /// as they are.
    Unreachable,
    /// No report for longer than the fence timeout plus a margin (30 s): its agent, if it
    /// still runs, has stopped its HA instances; instances without HA are `error`.
    Down,
}

/// A host as the API shows it, with its capacity and what is allocated on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HostView {
    pub name: String,
    pub state: HostState,
    /// Disabled hosts take no new instances.
    pub enabled: bool,
    pub agent_url: String,
    /// `kvm` or `tcg`.
    pub accelerator: String,
    pub qemu_version: String,
    pub cpus: u32,
    pub memory_mib: u64,
    pub disk_gib: u64,
    /// Allocation ratios: capacity offered = physical x ratio.
    pub cpu_allocation_ratio: f64,
    pub ram_allocation_ratio: f64,
    pub disk_allocation_ratio: f64,
    pub vcpus_allocated: u32,
    pub memory_mib_allocated: u64,
    pub disk_gib_allocated: u64,
    pub instances: u32,
    pub last_seen: Option<DateTime<Utc>>,
    /// When the controller declared the host down; `None` unless it is down.
    #[serde(default)]
    pub down_since: Option<DateTime<Utc>>,
    /// The fence timeout has surely passed since the host's last report: its agent, if it
    /// still runs, has stopped its HA instances, which may run elsewhere.
    #[serde(default)]
    pub fenced: bool,
    /// HA instances restarted on other hosts since the host went down.
    #[serde(default)]
    pub ha_restarted: u32,
    /// Resident memory of the host's running VMs (their QEMU processes), in MiB, as last
    /// measured; `None` before the first usage samples.
    #[serde(default)]
    pub memory_mib_used: Option<u64>,
    /// Kernel same-page merging on the host; `None` where the kernel has none.
    #[serde(default)]
    pub ksm: Option<HostKsm>,
    /// The host's cache of uploaded images, as its agent last reported it.
    #[serde(default)]
    pub image_cache: Option<HostImageCache>,
    /// The host's identity: SHA-256 of the certificate its name is bound to (enrolment);
    /// `None` for a host not enrolled.
    #[serde(default)]
    pub cert_fingerprint: Option<String>,
}

impl HostView {
    /// vCPUs that may be allocated: physical CPUs x the vCPU allocation ratio.
    pub fn vcpus_capacity(&self) -> u64 {
        (f64::from(self.cpus) * self.cpu_allocation_ratio).floor() as u64
    }

    /// Memory that may be allocated: physical memory x the RAM allocation ratio.
    pub fn memory_mib_capacity(&self) -> u64 {
        (self.memory_mib as f64 * self.ram_allocation_ratio).floor() as u64
    }
}

/// KSM on a host. The kernel's counters are machine-wide: hosts that are network namespaces
/// of one machine report the same figures.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HostKsm {
    /// KSM merges pages (`/sys/kernel/mm/ksm/run` is 1).
    pub running: bool,
    pub pages_shared: u64,
    pub pages_sharing: u64,
    pub pages_unshared: u64,
    /// Memory saved by merging (`pages_sharing` x page size), in bytes.
    pub saved_bytes: u64,
}

/// Why a VM a host runs is an orphan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OrphanKind {
    /// The store knows no instance with this id (e.g. a controller started on an empty or
    /// restored database).
    Unknown,
    /// The instance is placed on another host and no completed migration proves this copy
    /// stale (e.g. a host registered under a wrong name, or a failed migration's leftover).
    Misplaced,
}

impl OrphanKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OrphanKind::Unknown => "unknown",
            OrphanKind::Misplaced => "misplaced",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "unknown" => Some(OrphanKind::Unknown),
            "misplaced" => Some(OrphanKind::Misplaced),
            _ => None,
        }
    }
}

/// A VM a host runs that the store does not account for. nimbus never deletes one on its
/// own: an operator does (`nimbus host orphans delete HOST VM_ID`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OrphanView {
    pub host: String,
    /// The VM's id (an instance id, for the agent).
    pub vm_id: uuid::Uuid,
    pub kind: OrphanKind,
    /// The VM's run state as its agent last reported it.
    pub vm_state: String,
    /// For a misplaced copy: the host its instance is placed on.
    pub placed_on: Option<String>,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
}

/// A host's cache of uploaded images (fetched from the controller on first use, by digest).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HostImageCache {
    /// Bound on the cache; least recently used images no instance uses go beyond it.
    pub max_bytes: u64,
    pub used_bytes: u64,
    /// Downloads since the agent started.
    pub downloads: u64,
    /// Cached images found damaged and fetched again since the agent started.
    pub repairs: u64,
    pub images: Vec<HostCachedImage>,
}

/// One image in a host's cache.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HostCachedImage {
    /// `sha256:<hex>`.
    pub digest: String,
    pub size_bytes: u64,
    pub last_used: DateTime<Utc>,
    /// Instance disks on the host overlay it.
    pub in_use: bool,
}

/// Answer of `POST /v1/hosts/{host}/evacuate`: the restarts started, and what stays.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EvacuateResult {
    /// One `instance_ha_restart` operation per instance restarted elsewhere.
    pub operations: Vec<crate::OperationView>,
    /// Instances left on the host, each with the reason.
    pub left: Vec<EvacuateLeft>,
}

/// An instance an evacuation leaves on its host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EvacuateLeft {
    pub instance: String,
    pub reason: String,
}

/// Asks for a join token (`POST /v1/hosts/join-tokens`, admin).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CreateJoinToken {
    /// How long the token may be used, in seconds [default: 3600; at most 7 days].
    #[serde(default)]
    pub expires_in_secs: Option<u64>,
}

/// A one-time enrolment token: `nimbus agent --join TOKEN` on the new host. It carries the
/// CA's fingerprint, so the host can check the controller before trusting it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JoinTokenView {
    /// The secret token (shown once; the controller keeps only its hash).
    pub token: String,
    pub expires_at: DateTime<Utc>,
    /// SHA-256 of the cloud's CA certificate.
    pub ca_fingerprint: String,
}
