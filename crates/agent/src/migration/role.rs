//! The VM's part in a migration, persisted in `<vm dir>/migration.json` so that an agent
//! restarted in the middle of a migration re-adopts the QEMU in the right state instead of
//! taking a waiting target for a running VM or a paused source for a crashed one.
//!
//! ```text
//! {"role": "incoming", "disk": {...}, "policy": {...}, "ready": {...}, "resumed": false}
//! {"role": "outgoing", "request": {...}, "started_unix_ms": 1700000000000,
//!  "ladder": {...}, "progress": {...}}
//! ```
//! The file is written when the role starts and at every phase change; it stays after the
//! migration ended (the record of the last migration, and for a target the fact that its
//! guest came by migration rather than by boot).

use super::policy::Ladder;
use crate::error::Result;
use crate::instance::files::{read_json, write_json, VmDir};
use nimbus_agent_api::{
    DiskTransfer, IncomingReady, MigrateRequest, MigrationPhase, MigrationPolicy, MigrationProgress,
};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// What this VM is, or last was, in a migration.
// One value per VM, written on phase changes only: its size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum MigrationRole {
    /// Target: QEMU was launched with `-incoming defer` to receive the VM.
    Incoming(IncomingRecord),
    /// Source: the VM is (or was) being sent to another host.
    Outgoing(OutgoingRecord),
}

/// The target's side.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IncomingRecord {
    pub disk: DiskTransfer,
    pub policy: MigrationPolicy,
    /// What the source was told, once QEMU listens.
    pub ready: Option<IncomingReady>,
    /// The guest resumed here: the migration completed.
    pub resumed: bool,
    /// The guest was ready on the source (see [`IncomingRequest::guest_ready`]).
    #[serde(default)]
    pub guest_ready: bool,
}

/// The source's side.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutgoingRecord {
    pub request: MigrateRequest,
    pub started_unix_ms: u64,
    /// How far the convergence policy has escalated.
    pub ladder: Ladder,
    /// The last progress reported (final once the phase is).
    pub progress: MigrationProgress,
}

/// `<vm dir>/migration.json`.
pub fn path(dir: &VmDir) -> PathBuf {
    dir.dir().join("migration.json")
}

/// Reads the role; `None` if the VM never took part in a migration.
pub fn read(dir: &VmDir) -> Result<Option<MigrationRole>> {
    read_json(&path(dir))
}

/// Writes the role atomically.
pub fn write(dir: &VmDir, role: &MigrationRole) -> Result<()> {
    write_json(&path(dir), role)
}

/// Progress of a VM with no migration since the agent started.
pub fn no_progress() -> MigrationProgress {
    MigrationProgress {
        migration_id: None,
        phase: MigrationPhase::None,
        round: 0,
        transferred_bytes: 0,
        remaining_bytes: 0,
        total_bytes: 0,
        dirty_rate_bytes_per_s: 0,
        expected_downtime_ms: None,
        throttle_pct: 0,
        disk_remaining_bytes: 0,
        elapsed_ms: 0,
        stopped_unix_ms: None,
        last_heartbeat_unix_ms: None,
        escalations: Vec::new(),
        error: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_both_roles() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = VmDir::new(tmp.path().to_path_buf());
        assert_eq!(read(&dir).expect("read"), None);
        let incoming = MigrationRole::Incoming(IncomingRecord {
            disk: DiskTransfer::Shared {
                path: "/shared/disk.qcow2".into(),
            },
            policy: MigrationPolicy::default(),
            ready: None,
            resumed: false,
            guest_ready: true,
        });
        write(&dir, &incoming).expect("write");
        assert_eq!(read(&dir).expect("read"), Some(incoming));
        let outgoing = MigrationRole::Outgoing(OutgoingRecord {
            request: MigrateRequest {
                target: IncomingReady {
                    migration_uri: "tcp:127.0.0.1:4444".into(),
                    nbd: None,
                    tls: false,
                },
                policy: MigrationPolicy::default(),
                migration_id: None,
                owner_epoch: None,
                target_host: None,
                tls_credential: None,
            },
            started_unix_ms: 1,
            ladder: Ladder::default(),
            progress: no_progress(),
        });
        write(&dir, &outgoing).expect("write");
        let text = std::fs::read_to_string(path(&dir)).expect("read");
        assert!(text.contains("\"role\": \"outgoing\""), "{text}");
        assert_eq!(read(&dir).expect("read"), Some(outgoing));
    }
}
