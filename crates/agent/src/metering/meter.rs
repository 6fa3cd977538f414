//! The meter of one VM on this host, as a pure state machine over what the agent observes.
//!
//! ```text
//!   (none) --VM runs here (state running, not incoming)--> open(meter_id, pid, started)
//!   open --tick--> sample seq n (counters cumulative since open), n+1 ...
//!   open --VM stops running here, or another QEMU--> closing sample (last), (none)
//! ```
//! The meter is persisted (`meter.json` in the VM directory) after every change, so an agent
//! that restarts continues the same meter and sequence while the same QEMU runs.

use nimbus_agent_api::{MeterKind, UsageSample};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Live figures of a VM, read at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reading {
    /// Unix time (ms) of the reading.
    pub at_ms: u64,
    /// CPU time of the QEMU process since it started.
    pub cpu_ns: u64,
    pub rss_bytes: u64,
    pub storage_bytes: u64,
    /// Bytes the guest received / sent through its taps since they were created.
    pub net_rx_bytes: u64,
    pub net_tx_bytes: u64,
}

/// What the agent knows of the VM at an observation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmView {
    pub instance_id: Uuid,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// The guest runs here (state running, not waiting for a migration).
    pub running: bool,
    /// The current QEMU process.
    pub pid: Option<u32>,
    /// When the guest started running here (launch, or resume of a migrated guest).
    pub run_started_ms: Option<u64>,
    /// When it stopped running here, if known exactly (the STOP event of a migration away).
    pub run_ended_ms: Option<u64>,
}

/// An open meter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenMeter {
    pub meter_id: Uuid,
    /// The QEMU process measured.
    pub pid: u32,
    pub started_ms: u64,
    pub next_seq: u64,
    /// Raw readings when the meter opened (cumulative counters count from here).
    pub base: Reading,
    /// The last reading.
    pub last: Reading,
}

/// The persisted meter of a VM.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeterState {
    pub open: Option<OpenMeter>,
    /// When the last meter of this VM closed: a run start older than that is stale (e.g. a
    /// source resumed after a completed migration was undone keeps its old RESUME time), so
    /// two meters of one VM never overlap.
    #[serde(default)]
    pub closed_at_ms: Option<u64>,
}

/// Why the meter is looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Occasion {
    /// First look by this agent process (after a restart, a closing time is not known: the
    /// meter closes at its last sample, billing nothing unobserved).
    Resume,
    /// The VM's status changed.
    Change,
    /// The sampling interval elapsed: take a sample.
    Tick,
}

impl MeterState {
    /// Applies one observation; returns the samples to send. `reading` is `None` when the
    /// VM has no live process to read.
    pub fn observe(
        &mut self,
        vm: &VmView,
        reading: Option<Reading>,
        now_ms: u64,
        occasion: Occasion,
    ) -> Vec<UsageSample> {
        let mut out = Vec::new();
        if let Some(open) = &self.open {
            let same = vm.running && vm.pid == Some(open.pid);
            if !same {
                let ended = match occasion {
                    Occasion::Resume => open.last.at_ms,
                    _ => vm.run_ended_ms.unwrap_or(now_ms),
                };
                // The paused source of a migration still has its process: read it.
                let last = match reading {
                    Some(r) if vm.pid == Some(open.pid) => r,
                    _ => open.last,
                };
                let closing = sample(vm, open, open.next_seq, ended, &last, true);
                self.closed_at_ms = Some(closing.sampled_unix_ms);
                out.push(closing);
                self.open = None;
            }
        }
        match (&mut self.open, vm.running, vm.pid, reading) {
            (None, true, Some(pid), Some(r)) => {
                // A start older than the last close is stale (the process ran before):
                // the guest runs again from now, when the change is seen.
                let started = match vm.run_started_ms {
                    Some(s) if s >= self.closed_at_ms.unwrap_or(0) => s.min(now_ms),
                    _ => now_ms,
                };
                self.open = Some(OpenMeter {
                    meter_id: Uuid::new_v4(),
                    pid,
                    started_ms: started,
                    next_seq: 0,
                    base: r,
                    last: r,
                });
            }
            (Some(open), true, Some(_), Some(r)) if occasion == Occasion::Tick => {
                open.last = r;
                out.push(sample(vm, open, open.next_seq, r.at_ms, &r, false));
                open.next_seq += 1;
            }
            _ => {}
        }
        out
    }
}

fn sample(
    vm: &VmView,
    open: &OpenMeter,
    seq: u64,
    at_ms: u64,
    r: &Reading,
    last: bool,
) -> UsageSample {
    let at_ms = at_ms.max(open.started_ms);
    UsageSample {
        meter_id: open.meter_id,
        seq,
        kind: MeterKind::Instance,
        instance_id: vm.instance_id,
        started_unix_ms: open.started_ms,
        sampled_unix_ms: at_ms,
        vcpus: vm.vcpus,
        memory_mib: vm.memory_mib,
        running_ms: at_ms - open.started_ms,
        cpu_ns: r.cpu_ns.saturating_sub(open.base.cpu_ns),
        net_rx_bytes: r.net_rx_bytes.saturating_sub(open.base.net_rx_bytes),
        net_tx_bytes: r.net_tx_bytes.saturating_sub(open.base.net_tx_bytes),
        rss_bytes: r.rss_bytes,
        storage_bytes: r.storage_bytes,
        // The disk is billed by its own meter (crate::metering::storage).
        storage_kib_seconds: 0,
        last,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(running: bool, pid: Option<u32>) -> VmView {
        VmView {
            instance_id: Uuid::nil(),
            vcpus: 2,
            memory_mib: 256,
            running,
            pid,
            run_started_ms: Some(1_000),
            run_ended_ms: None,
        }
    }

    fn reading(at_ms: u64, cpu_ns: u64, rx: u64) -> Option<Reading> {
        Some(Reading {
            at_ms,
            cpu_ns,
            net_rx_bytes: rx,
            storage_bytes: 4096,
            ..Reading::default()
        })
    }

    /// What `m` emits seeing the VM running as pid 7, read at `at_ms` (also now) with those
    /// counters.
    fn running(
        m: &mut MeterState,
        at_ms: u64,
        cpu_ns: u64,
        rx: u64,
        occasion: Occasion,
    ) -> Vec<UsageSample> {
        m.observe(
            &vm(true, Some(7)),
            reading(at_ms, cpu_ns, rx),
            at_ms,
            occasion,
        )
    }

    #[test]
    fn opens_samples_cumulatively_and_closes_at_exit() {
        let mut m = MeterState::default();
        assert!(running(&mut m, 1_200, 500, 100, Occasion::Change).is_empty());
        let s0 = running(&mut m, 11_000, 900, 150, Occasion::Tick);
        let s1 = running(&mut m, 21_000, 1_500, 400, Occasion::Tick);
        assert_eq!((s0[0].seq, s1[0].seq), (0, 1));
        assert_eq!(s0[0].running_ms, 10_000, "counted from the run start");
        assert_eq!(s1[0].running_ms, 20_000);
        assert_eq!(
            (s1[0].cpu_ns, s1[0].net_rx_bytes),
            (1_000, 300),
            "since the meter opened"
        );
        assert_eq!(s0[0].meter_id, s1[0].meter_id);
        // QEMU exits at 25 s: the closing sample ends then, with the last counters.
        let end = m.observe(&vm(false, None), None, 25_000, Occasion::Change);
        assert_eq!(end.len(), 1);
        assert!(end[0].last);
        assert_eq!(
            (end[0].seq, end[0].running_ms, end[0].cpu_ns),
            (2, 24_000, 1_000)
        );
        assert_eq!(m.open, None);
    }

    #[test]
    fn a_migration_away_closes_at_the_stop_event_and_a_new_process_opens_a_new_meter() {
        let mut m = MeterState::default();
        running(&mut m, 1_000, 0, 0, Occasion::Change);
        running(&mut m, 5_000, 10, 0, Occasion::Tick);
        let mut paused = vm(false, Some(7));
        paused.run_ended_ms = Some(8_000);
        let end = m.observe(&paused, reading(9_000, 30, 0), 9_000, Occasion::Change);
        assert_eq!((end[0].running_ms, end[0].cpu_ns), (7_000, 30));
        // Restarted later (a new process): a new meter from its own start.
        let mut again = vm(true, Some(8));
        again.run_started_ms = Some(20_000);
        m.observe(&again, reading(20_100, 0, 0), 20_100, Occasion::Change);
        let open = m.open.clone().expect("open");
        assert_ne!(open.meter_id, end[0].meter_id);
        assert_eq!(open.started_ms, 20_000);
    }

    #[test]
    fn after_an_agent_restart_a_gone_process_closes_at_its_last_sample() {
        let mut m = MeterState::default();
        running(&mut m, 1_000, 0, 0, Occasion::Change);
        running(&mut m, 6_000, 10, 0, Occasion::Tick);
        let end = m.observe(&vm(false, None), None, 60_000, Occasion::Resume);
        assert_eq!((end[0].sampled_unix_ms, end[0].running_ms), (6_000, 5_000));
        // The same process still running after a restart continues the sequence.
        let mut m2 = MeterState::default();
        running(&mut m2, 1_000, 0, 0, Occasion::Change);
        running(&mut m2, 2_000, 0, 0, Occasion::Tick);
        assert!(running(&mut m2, 30_000, 0, 0, Occasion::Resume).is_empty());
        let s = running(&mut m2, 31_000, 0, 0, Occasion::Tick);
        assert_eq!(
            (s[0].seq, s[0].running_ms),
            (1, 30_000),
            "the gap is covered"
        );
    }

    #[test]
    fn a_reopened_meter_never_starts_before_the_last_one_closed() {
        let mut m = MeterState::default();
        running(&mut m, 1_000, 0, 0, Occasion::Change);
        let mut paused = vm(false, Some(7));
        paused.run_ended_ms = Some(9_000);
        m.observe(&paused, reading(9_500, 0, 0), 9_500, Occasion::Change);
        // The migration is undone: the same QEMU runs again; its last RESUME is from 1 s.
        running(&mut m, 12_000, 0, 0, Occasion::Change);
        assert_eq!(m.open.as_ref().map(|o| o.started_ms), Some(12_000));
    }

    #[test]
    fn nothing_is_measured_while_not_running() {
        let mut m = MeterState::default();
        assert!(m
            .observe(
                &vm(false, Some(7)),
                reading(1_000, 0, 0),
                1_000,
                Occasion::Tick
            )
            .is_empty());
        assert_eq!(m.open, None);
    }
}
