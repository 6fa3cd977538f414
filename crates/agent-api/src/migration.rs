//! Live migration between two agents, driven by the controller.
//!
//! ```text
//! controller                 target agent                         source agent
//!   │ POST /vms/{id}/migration/incoming (IncomingRequest)
//!   │──────────────────────────▶ define VM dir (disk: shared path, or a fresh overlay
//!   │                            exported over NBD for the mirror), launch QEMU with
//!   │                            -incoming defer, migrate-incoming on a TCP port
//!   │                            (both over TLS: only `source_host` may connect)
//!   │◀── IncomingReady { migration_uri, nbd, tls } ──
//!   │ POST /vms/{id}/migration/start (MigrateRequest) ─────────────────▶ set capabilities and
//!   │                                                                    parameters (policy),
//!   │                                                                    mirror disk if asked,
//!   │                                                                    (TLS: target must be
//!   │                                                                    `target_host`)
//!   │                                                                    `migrate`; escalate
//!   │ GET  /vms/{id}/migration (poll) ────────────────────────────────▶ MigrationProgress
//!   │   ... phase = completed: source paused (postmigrate, VM state `migrated`), target running
//!   │ GET  /vms/{id} on target: running, heartbeat fresh  (only then is it done)
//!   │ commit in the store (point of no return)
//!   │ DELETE /vms/{id}?keep_disk=<shared> on source ──────────────────▶ tear down
//! On any failure before commit: POST /vms/{id}/migration/cancel on the source (resumes the
//! VM there), DELETE /vms/{id}?keep_disk=<shared> on the target.
//! ```
//! Once the phase is `completed` the guest has run on the target: undo by deleting the
//! target first, then cancelling on the source (QEMU `cont`s the paused source; with a
//! shared disk QEMU's image lock refuses, `conflict`, while the target still holds it).

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// How the target gets the instance's disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum DiskTransfer {
    /// The disk file is visible on both hosts at `path` (shared storage): nothing to copy.
    Shared { path: PathBuf },
    /// The target creates its own overlay on the same base image and serves it over NBD;
    /// the source mirrors the disk into it while memory is copied.
    Mirror,
}

/// Sent to the target agent of a cold migration: define the stopped VM with this disk
/// (`Shared`: link to it; `Mirror`: a fresh overlay that `PUT /vms/{id}/disk` replaces).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColdIncomingRequest {
    pub spec: crate::VmSpec,
    pub disk: DiskTransfer,
}

/// Sent to the target agent: prepare to receive the VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IncomingRequest {
    pub spec: crate::VmSpec,
    pub disk: DiskTransfer,
    /// The policy the source will be given: the target enables the migration features
    /// both ends must agree on (multifd and its channel count). Absent: the default.
    #[serde(default)]
    pub policy: MigrationPolicy,
    /// The source's host name: over TLS, the target accepts only a client certificate of
    /// the cloud CA naming this host (`CN`). Absent: any host certificate of the CA.
    #[serde(default)]
    pub source_host: Option<String>,
    /// The target QEMU's certificate for this migration only (see [`MigrationCredential`]).
    /// Absent (an older controller): QEMU gets the host's own key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_credential: Option<MigrationCredential>,
    /// The guest was ready on the source: it is ready here once it runs after the switch-over
    /// (a guest without nimbus's heartbeat, such as a cloud image, gives no other sign, and
    /// cloud-init does not report again without a boot).
    #[serde(default)]
    pub guest_ready: bool,
}

/// A key and a certificate of the cloud CA issued by the controller for one migration and
/// one end of it (`OU=migration`, `CN` = the host, valid for the migration's timeout plus
/// a margin): what that end's QEMU gets instead of the host's long-term key, so that a
/// guest escaping into its QEMU during a migration gets a key that expires in minutes and
/// that no API of the cloud accepts. Never persisted by the agent.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrationCredential {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for MigrationCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MigrationCredential")
            .finish_non_exhaustive()
    }
}

/// Where the source must send the VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IncomingReady {
    /// QEMU migration URI, e.g. `tcp:10.249.0.12:49152`.
    pub migration_uri: String,
    /// NBD server for the disk mirror (only with [`DiskTransfer::Mirror`]).
    pub nbd: Option<NbdTarget>,
    /// The target serves both over TLS with its host certificate of the cloud CA and
    /// requires the source's (false only on a target started with
    /// `--insecure-migration`).
    #[serde(default)]
    pub tls: bool,
}

/// An NBD export on the target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NbdTarget {
    pub host: String,
    pub port: u16,
    pub export: String,
}

/// How a migration should converge. nimbus chooses these; users may set the downtime budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrationPolicy {
    /// Longest acceptable pause of the guest at switch-over.
    pub max_downtime_ms: u64,
    /// Bandwidth cap; `None` means uncapped (QEMU's default cap of 128 MiB/s is what keeps
    /// busy guests from converging).
    pub max_bandwidth_mib_s: Option<u64>,
    /// Throttle the guest's vCPUs when rounds stop shrinking.
    pub auto_converge: bool,
    /// Switch to post-copy when pre-copy cannot converge even throttled.
    pub allow_postcopy: bool,
    /// Parallel migration channels (multifd); `None` for one stream.
    pub multifd_channels: Option<u8>,
    /// Give up (cancel, VM keeps running on the source) after this long.
    pub timeout_secs: u64,
    /// Give up (the same way) as soon as the transfer (memory sent, disk mirror copied)
    /// makes no progress for this long: a cut link is detected in seconds, not at
    /// `timeout_secs`. Not applied in post-copy, which cannot be undone.
    #[serde(default = "default_stall_timeout_secs")]
    pub stall_timeout_secs: u64,
}

/// The default stall bound (see [`MigrationPolicy::stall_timeout_secs`]).
pub const DEFAULT_STALL_TIMEOUT_SECS: u64 = 10;

fn default_stall_timeout_secs() -> u64 {
    DEFAULT_STALL_TIMEOUT_SECS
}

impl Default for MigrationPolicy {
    fn default() -> Self {
        Self {
            max_downtime_ms: 50,
            max_bandwidth_mib_s: None,
            auto_converge: true,
            allow_postcopy: false,
            multifd_channels: None,
            timeout_secs: 300,
            stall_timeout_secs: DEFAULT_STALL_TIMEOUT_SECS,
        }
    }
}

/// Sent to the source agent: send the VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrateRequest {
    pub target: IncomingReady,
    pub policy: MigrationPolicy,
    /// The controller's id for this migration, echoed in [`MigrationProgress`] so that a
    /// resumed controller can tell its own migration from an earlier one of the same VM.
    #[serde(default)]
    pub migration_id: Option<uuid::Uuid>,
    /// The epoch of the controller's ownership of that operation (bumped whenever another
    /// controller takes it over): a request with an older epoch than one already seen for
    /// the same migration comes from a stale owner and is refused.
    #[serde(default)]
    pub owner_epoch: Option<u64>,
    /// The target's host name: over TLS, the target's certificate must name it. Absent:
    /// the address of [`IncomingReady::migration_uri`] must be one of its names.
    #[serde(default)]
    pub target_host: Option<String>,
    /// The source QEMU's certificate for this migration only (see [`MigrationCredential`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_credential: Option<MigrationCredential>,
}

/// Where a migration is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MigrationPhase {
    /// No migration has run on this VM since the agent started.
    None,
    Setup,
    /// Copying the disk to the target (block mirror) before memory.
    MirroringDisk,
    /// Copying memory while the guest runs.
    PreCopy,
    /// The guest runs on the target; remaining pages are pulled on demand.
    PostCopy,
    /// The source is paused and the target has everything.
    Completed,
    Failed,
    Cancelled,
}

impl MigrationPhase {
    /// The migration will not change any more.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            MigrationPhase::Completed | MigrationPhase::Failed | MigrationPhase::Cancelled
        )
    }
}

/// Progress and, at the end, the record of a migration, as the source agent sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrationProgress {
    /// The id the controller gave this migration ([`MigrateRequest::migration_id`]).
    #[serde(default)]
    pub migration_id: Option<uuid::Uuid>,
    pub phase: MigrationPhase,
    /// Pre-copy round (QEMU's dirty-sync count).
    pub round: u64,
    pub transferred_bytes: u64,
    pub remaining_bytes: u64,
    pub total_bytes: u64,
    /// Rate at which the guest dirties memory.
    pub dirty_rate_bytes_per_s: u64,
    /// QEMU's estimate of the switch-over pause.
    pub expected_downtime_ms: Option<u64>,
    /// vCPU throttle applied by auto-converge, in percent.
    pub throttle_pct: u64,
    /// Disk bytes still to mirror.
    pub disk_remaining_bytes: u64,
    pub elapsed_ms: u64,
    /// Unix time (ms) of the source's STOP event at switch-over (downtime starts here).
    pub stopped_unix_ms: Option<u64>,
    /// Unix time (ms) of the last heartbeat line the source received from the guest.
    pub last_heartbeat_unix_ms: Option<u64>,
    /// What nimbus did to make it converge, in order ("auto-converge at round 6", ...).
    pub escalations: Vec<String>,
    pub error: Option<String>,
}
