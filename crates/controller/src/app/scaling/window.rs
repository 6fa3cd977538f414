//! Moving-window CPU use from cumulative CPU-time samples: utilisation = delta CPU time /
//! (delta wall time x vCPUs), over the samples inside the window. Pure.

use std::collections::VecDeque;

/// One sample: wall time (seconds on any monotonic clock) and cumulative CPU time (ns).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub at_secs: f64,
    pub cpu_ns: u64,
}

/// Share of the window the samples must span before the average counts (the first sample
/// of a window is usually a tick after its start).
pub const MIN_COVERAGE: f64 = 0.7;

/// The samples of one instance, oldest first.
#[derive(Debug, Clone, Default)]
pub struct CpuWindow {
    samples: VecDeque<Sample>,
}

impl CpuWindow {
    /// Adds a sample and forgets those older than `keep_secs` before it. A CPU time that
    /// goes backwards means a new QEMU process (restart, migration): the window restarts.
    pub fn push(&mut self, s: Sample, keep_secs: f64) {
        if let Some(last) = self.samples.back() {
            if s.cpu_ns < last.cpu_ns || s.at_secs <= last.at_secs {
                if s.cpu_ns < last.cpu_ns {
                    self.samples.clear();
                } else {
                    return;
                }
            }
        }
        self.samples.push_back(s);
        while self
            .samples
            .front()
            .is_some_and(|f| f.at_secs < s.at_secs - keep_secs)
        {
            self.samples.pop_front();
        }
    }

    /// Average CPU use over the last `window_secs` before the newest sample, in percent of
    /// `vcpus`; `None` until the samples cover [`MIN_COVERAGE`] of the window.
    pub fn percent(&self, window_secs: f64, vcpus: u32) -> Option<f64> {
        let newest = self.samples.back()?;
        let oldest = self
            .samples
            .iter()
            .find(|s| s.at_secs >= newest.at_secs - window_secs)?;
        let span = newest.at_secs - oldest.at_secs;
        if span <= 0.0 || span < window_secs * MIN_COVERAGE {
            return None;
        }
        let used = (newest.cpu_ns - oldest.cpu_ns) as f64 / 1e9;
        Some(100.0 * used / (span * f64::from(vcpus.max(1))))
    }

    /// Time of the newest sample.
    pub fn newest_secs(&self) -> Option<f64> {
        self.samples.back().map(|s| s.at_secs)
    }
}
