//! The storage meters of one VM on this host: the allocated size of its instance disk, and
//! the bytes its snapshots hold, sampled while the VM is defined here, running or not.
//!
//! ```text
//!   (none) --VM defined here (not waiting for a migration, not migrated away)--> open
//!   open --tick--> sample (storage_bytes gauge; running_ms: time since the meter opened)
//!   open --deleted, or switch-over of a migration away--> closing sample, (none)
//! ```

use nimbus_agent_api::{MeterKind, UsageSample};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What a storage meter needs of the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskView {
    /// [`MeterKind::Disk`] or [`MeterKind::Snapshot`].
    pub kind: MeterKind,
    pub instance_id: Uuid,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// The disk is this host's to bill: the VM is defined, not deleted, not a migration
    /// target still waiting, not a source after the switch-over.
    pub present: bool,
    /// When it stopped being present, if known exactly (a migration's STOP event).
    pub ended_ms: Option<u64>,
}

/// An open disk meter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpenDisk {
    pub meter_id: Uuid,
    pub started_ms: u64,
    pub next_seq: u64,
    pub last_at_ms: u64,
    pub last_bytes: u64,
    /// Storage held since the meter opened, in KiB x milliseconds.
    #[serde(default)]
    pub kib_ms: f64,
}

impl OpenDisk {
    /// Integrates the size up to `at_ms` (the mean of the last and the new size over the time
    /// between them), and takes `bytes` as the new size.
    fn advance(&mut self, at_ms: u64, bytes: u64) {
        let at_ms = at_ms.max(self.last_at_ms);
        let mean_kib = (self.last_bytes as f64 + bytes as f64) / 2.0 / 1024.0;
        self.kib_ms += mean_kib * (at_ms - self.last_at_ms) as f64;
        self.last_at_ms = at_ms;
        self.last_bytes = bytes;
    }
}

/// The persisted disk meter of a VM.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DiskMeter {
    pub open: Option<OpenDisk>,
}

impl DiskMeter {
    /// Applies one observation (`bytes`: the disk's allocated size now, 0 if it is gone).
    pub fn observe(
        &mut self,
        vm: &DiskView,
        bytes: u64,
        now_ms: u64,
        occasion: super::meter::Occasion,
    ) -> Vec<UsageSample> {
        use super::meter::Occasion;
        let mut out = Vec::new();
        match &mut self.open {
            Some(open) if !vm.present => {
                let ended = match occasion {
                    Occasion::Resume => open.last_at_ms,
                    _ => vm.ended_ms.unwrap_or(now_ms),
                };
                // A deleted disk reads 0 bytes: it held its last size until the end.
                let size = if bytes > 0 { bytes } else { open.last_bytes };
                open.advance(ended, size);
                out.push(sample(vm, open, true));
                self.open = None;
            }
            Some(open) if occasion == Occasion::Tick => {
                open.advance(now_ms, bytes);
                out.push(sample(vm, open, false));
                open.next_seq += 1;
            }
            Some(_) => {}
            None if vm.present => {
                self.open = Some(OpenDisk {
                    meter_id: Uuid::new_v4(),
                    started_ms: now_ms,
                    next_seq: 0,
                    last_at_ms: now_ms,
                    last_bytes: bytes,
                    kib_ms: 0.0,
                });
            }
            None => {}
        }
        out
    }
}

fn sample(vm: &DiskView, open: &OpenDisk, last: bool) -> UsageSample {
    let at_ms = open.last_at_ms.max(open.started_ms);
    UsageSample {
        meter_id: open.meter_id,
        seq: open.next_seq,
        kind: vm.kind,
        instance_id: vm.instance_id,
        started_unix_ms: open.started_ms,
        sampled_unix_ms: at_ms,
        vcpus: vm.vcpus,
        memory_mib: vm.memory_mib,
        running_ms: at_ms - open.started_ms,
        cpu_ns: 0,
        net_rx_bytes: 0,
        net_tx_bytes: 0,
        rss_bytes: 0,
        storage_bytes: open.last_bytes,
        storage_kib_seconds: (open.kib_ms / 1000.0).round() as u64,
        last,
    }
}

#[cfg(test)]
mod tests {
    use super::super::meter::Occasion;
    use super::*;

    fn vm(present: bool) -> DiskView {
        DiskView {
            kind: MeterKind::Disk,
            instance_id: Uuid::nil(),
            vcpus: 1,
            memory_mib: 256,
            present,
            ended_ms: None,
        }
    }

    #[test]
    fn a_stopped_vm_keeps_its_disk_metered_until_deleted() {
        let mut m = DiskMeter::default();
        assert!(m
            .observe(&vm(true), 100, 1_000, Occasion::Change)
            .is_empty());
        let s = m.observe(&vm(true), 4096, 11_000, Occasion::Tick);
        assert_eq!(
            (s[0].kind, s[0].seq, s[0].storage_bytes),
            (MeterKind::Disk, 0, 4096)
        );
        assert_eq!(s[0].running_ms, 10_000);
        // Deleted: the file is gone; the closing sample keeps the last size.
        let end = m.observe(&vm(false), 0, 15_000, Occasion::Change);
        assert_eq!(
            (end[0].seq, end[0].storage_bytes, end[0].last),
            (1, 4096, true)
        );
        assert_eq!(end[0].sampled_unix_ms, 15_000);
        assert_eq!(m.open, None);
    }

    #[test]
    fn migrated_away_closes_at_the_switch_over_and_a_restart_at_the_last_sample() {
        let mut m = DiskMeter::default();
        m.observe(&vm(true), 1, 1_000, Occasion::Change);
        m.observe(&vm(true), 1, 5_000, Occasion::Tick);
        let mut away = vm(false);
        away.ended_ms = Some(7_000);
        assert_eq!(
            m.observe(&away, 1, 9_000, Occasion::Change)[0].sampled_unix_ms,
            7_000
        );
        let mut m = DiskMeter::default();
        m.observe(&vm(true), 1, 1_000, Occasion::Change);
        m.observe(&vm(true), 1, 5_000, Occasion::Tick);
        assert_eq!(
            m.observe(&vm(false), 0, 60_000, Occasion::Resume)[0].sampled_unix_ms,
            5_000
        );
    }
}
