//! QEMU's migration statistics as [`MigrationProgress`], and the clocks they are read in.

use super::policy::RoundSample;
use nimbus_agent_api::MigrationProgress;
use nimbus_qemu::qmp::{MigrationInfo, QmpTimestamp};

/// Guest page size assumed when QEMU does not report one.
const DEFAULT_PAGE_SIZE: u64 = 4096;

/// Where QEMU says the migration is, as far as the agent acts on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QemuStage {
    /// No migration started (`none`, or no status).
    NotStarted,
    /// Pre-copy: `setup`, `active`, `device`, `wait-unplug`.
    PreCopy,
    /// Paused before switch-over (`pre-switchover`): the guest is stopped; waits for
    /// `migrate-continue`.
    PreSwitchover,
    /// Post-copy in any of its states.
    PostCopy,
    Completed,
    Failed,
    /// `cancelling` or `cancelled`.
    Cancelled,
}

impl QemuStage {
    /// Classifies QEMU's `status` string.
    pub fn of(status: Option<&str>) -> Self {
        match status.unwrap_or("none") {
            "none" => QemuStage::NotStarted,
            "pre-switchover" => QemuStage::PreSwitchover,
            "completed" => QemuStage::Completed,
            "failed" => QemuStage::Failed,
            "cancelling" | "cancelled" => QemuStage::Cancelled,
            s if s.starts_with("postcopy") => QemuStage::PostCopy,
            _ => QemuStage::PreCopy,
        }
    }

    /// A migration is under way in QEMU (it would have to be cancelled).
    pub fn is_active(self) -> bool {
        matches!(
            self,
            QemuStage::PreCopy | QemuStage::PreSwitchover | QemuStage::PostCopy
        )
    }
}

/// Copies QEMU's figures into `progress`. Figures QEMU does not report (yet, or any more)
/// keep their last value.
pub fn apply(progress: &mut MigrationProgress, info: &MigrationInfo) {
    if let Some(ram) = &info.ram {
        let page = if ram.page_size == 0 {
            DEFAULT_PAGE_SIZE
        } else {
            ram.page_size
        };
        progress.round = ram.dirty_sync_count;
        progress.transferred_bytes = ram.transferred;
        progress.remaining_bytes = ram.remaining;
        progress.total_bytes = ram.total;
        progress.dirty_rate_bytes_per_s = ram.dirty_pages_rate.saturating_mul(page);
    }
    if info.expected_downtime.is_some() {
        progress.expected_downtime_ms = info.expected_downtime;
    }
    progress.throttle_pct = info.cpu_throttle_percentage.unwrap_or(0);
}

/// The round sample of `info`, if it carries RAM statistics of a started round.
pub fn sample(info: &MigrationInfo) -> Option<RoundSample> {
    let ram = info.ram.as_ref()?;
    (ram.dirty_sync_count > 0).then_some(RoundSample {
        round: ram.dirty_sync_count,
        remaining: ram.remaining,
        throttle_pct: info.cpu_throttle_percentage.unwrap_or(0),
    })
}

/// Unix time in milliseconds of a QMP event timestamp (QEMU's host wall clock).
pub fn unix_ms(ts: QmpTimestamp) -> Option<u64> {
    u64::try_from(ts.as_micros() / 1000)
        .ok()
        .filter(|ms| *ms > 0)
}

/// The host's Unix time in milliseconds (the clock of the heartbeat arrival times).
pub fn now_unix_ms() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migration::role::no_progress;

    #[test]
    fn stages_of_qemu_statuses() {
        assert_eq!(QemuStage::of(None), QemuStage::NotStarted);
        assert_eq!(QemuStage::of(Some("active")), QemuStage::PreCopy);
        assert_eq!(QemuStage::of(Some("device")), QemuStage::PreCopy);
        assert_eq!(
            QemuStage::of(Some("pre-switchover")),
            QemuStage::PreSwitchover
        );
        assert_eq!(QemuStage::of(Some("postcopy-paused")), QemuStage::PostCopy);
        assert_eq!(QemuStage::of(Some("cancelling")), QemuStage::Cancelled);
        assert!(!QemuStage::of(Some("completed")).is_active());
    }

    #[test]
    fn statistics_become_progress() {
        let info: MigrationInfo = serde_json::from_value(serde_json::json!({
            "status": "active", "expected-downtime": 40, "cpu-throttle-percentage": 20,
            "ram": {"transferred": 10, "remaining": 20, "total": 30,
                    "dirty-pages-rate": 3, "dirty-sync-count": 2, "page-size": 4096}
        }))
        .expect("info");
        let mut p = no_progress();
        apply(&mut p, &info);
        assert_eq!(
            (
                p.round,
                p.transferred_bytes,
                p.remaining_bytes,
                p.total_bytes
            ),
            (2, 10, 20, 30)
        );
        assert_eq!(p.dirty_rate_bytes_per_s, 3 * 4096);
        assert_eq!((p.expected_downtime_ms, p.throttle_pct), (Some(40), 20));
        // `completed` before the statistics are filled: nothing is lost.
        apply(&mut p, &MigrationInfo::default());
        assert_eq!((p.round, p.expected_downtime_ms), (2, Some(40)));
        assert_eq!(sample(&info).map(|s| s.round), Some(2));
        assert_eq!(sample(&MigrationInfo::default()), None);
    }

    #[test]
    fn event_timestamps_in_unix_ms() {
        let ts = QmpTimestamp {
            seconds: 1_700_000_000,
            microseconds: 936_158,
        };
        assert_eq!(unix_ms(ts), Some(1_700_000_000_936));
        assert_eq!(unix_ms(QmpTimestamp::default()), None);
    }
}
