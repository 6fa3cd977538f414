//! Capacity of a host and what is allocated on it.

use serde::{Deserialize, Serialize};

/// An amount of vCPU, memory and disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub vcpus: u64,
    pub memory_mib: u64,
    pub disk_gib: u64,
}

/// Overcommit: capacity offered = physical capacity x ratio.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AllocationRatios {
    pub cpu: f64,
    pub ram: f64,
    pub disk: f64,
}

impl Default for AllocationRatios {
    /// vCPU 4.0 (CPU-bound guests rarely all burn at once), RAM and disk 1.0 (overcommitting
    /// them risks the OOM killer and full disks; KSM savings are not guaranteed).
    fn default() -> Self {
        Self {
            cpu: 4.0,
            ram: 1.0,
            disk: 1.0,
        }
    }
}

/// One host as the scheduler sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct HostCapacity {
    pub name: String,
    /// The agent reports in and the host takes new instances.
    pub schedulable: bool,
    pub physical: Resources,
    pub allocated: Resources,
    pub ratios: AllocationRatios,
}

impl HostCapacity {
    /// What can be allocated in total, after the allocation ratios.
    pub fn offered(&self) -> Resources {
        let scale = |v: u64, r: f64| (v as f64 * r).floor() as u64;
        Resources {
            vcpus: scale(self.physical.vcpus, self.ratios.cpu),
            memory_mib: scale(self.physical.memory_mib, self.ratios.ram),
            disk_gib: scale(self.physical.disk_gib, self.ratios.disk),
        }
    }

    /// What is still free to allocate.
    pub fn free(&self) -> Resources {
        let offered = self.offered();
        Resources {
            vcpus: offered.vcpus.saturating_sub(self.allocated.vcpus),
            memory_mib: offered.memory_mib.saturating_sub(self.allocated.memory_mib),
            disk_gib: offered.disk_gib.saturating_sub(self.allocated.disk_gib),
        }
    }

    /// The request fits in what is free.
    pub fn fits(&self, want: &Resources) -> bool {
        let free = self.free();
        free.vcpus >= want.vcpus
            && free.memory_mib >= want.memory_mib
            && free.disk_gib >= want.disk_gib
    }
}
