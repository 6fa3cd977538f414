//! Hosts: the physical machines of the pool.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Whether the controller hears from a host's agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HostState {
    Up,
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
}
