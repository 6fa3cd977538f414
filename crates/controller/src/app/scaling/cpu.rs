//! Where the autoscaler gets per-instance CPU use.

use super::window::{CpuWindow, Sample};
use nimbus_agent_api::VmStatus;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;
use uuid::Uuid;

/// How long samples are kept: the longest window a group may ask for.
pub const MAX_WINDOW_SECS: u32 = 3600;

/// Per-instance CPU use, averaged over a window, for the autoscaler and `group show`.
///
/// Today's source is [`AgentCpu`]: the autoscaler polls every agent's `GET /vms` each tick
/// and hands the statuses to [`CpuSource::observe`], which keeps a moving window of
/// `VmStatus.cpu_time_ns` per instance. When metering (issue 5) lands, implement this trait
/// over its per-instance CPU samples or usage records (used vCPU-seconds between two times
/// divided by the window and the vCPUs), ignore `observe`, and install it in
/// `App::open` (`app/mod.rs`) instead of `AgentCpu`: nothing else changes.
pub trait CpuSource: Send + Sync {
    /// Called by the autoscaler each tick with the VM statuses the agents reported.
    fn observe(&self, vms: &HashMap<Uuid, VmStatus>);

    /// Average CPU use of instance `id` over the last `window_secs`, in percent of its
    /// `vcpus` (100 = all of them busy); `None` until the window is covered.
    fn cpu_percent(&self, id: Uuid, vcpus: u32, window_secs: u32) -> Option<f64>;
}

/// CPU use from the agents' VM statuses (cumulative CPU time of each QEMU process).
pub struct AgentCpu {
    origin: Instant,
    windows: Mutex<HashMap<Uuid, CpuWindow>>,
}

impl Default for AgentCpu {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
            windows: Mutex::new(HashMap::new()),
        }
    }
}

impl CpuSource for AgentCpu {
    fn observe(&self, vms: &HashMap<Uuid, VmStatus>) {
        let now = self.origin.elapsed().as_secs_f64();
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        // Instances no agent reports any more are gone (or their host is unreachable).
        windows.retain(|id, _| vms.contains_key(id));
        for (id, vm) in vms {
            if vm.pid.is_none() {
                continue;
            }
            let sample = Sample {
                at_secs: now,
                cpu_ns: vm.cpu_time_ns,
            };
            windows
                .entry(*id)
                .or_default()
                .push(sample, f64::from(MAX_WINDOW_SECS));
        }
    }

    fn cpu_percent(&self, id: Uuid, vcpus: u32, window_secs: u32) -> Option<f64> {
        let windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        windows.get(&id)?.percent(f64::from(window_secs), vcpus)
    }
}
