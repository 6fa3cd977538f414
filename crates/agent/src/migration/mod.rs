//! Live migration, the agent's half (the controller drives it; see
//! [`nimbus_agent_api::migration`] for the sequence between the agents).
//!
//! ```text
//!  target agent (incoming.rs)                      source agent (outgoing.rs)
//!  VM dir: spec, disk = link to the shared path
//!          or a fresh overlay on the same base
//!  QEMU -incoming defer          state starting, incoming
//!  [mirror] nbd-server-start unix:nbd-in.sock +
//!           block-export-add (writable), the
//!           agent's TLS port in front of it (tunnel.rs)
//!  migrate-incoming unix:migration-in.sock, the
//!  agent's TLS port in front of it (tunnel.rs)
//!  ── IncomingReady {uri, nbd, tls} ─────────────▶ tunnel of the memory stream opened
//!                                                 (its TLS connections made ahead),
//!                                                 capabilities + parameters (policy.rs),
//!                                                 [mirror] tunnel of the disk, blockdev-add
//!                                                   nbd unix:nbd-out.sock, blockdev-mirror
//!                                                   (disk_mirror.rs)   phase mirroring_disk
//!                                                   until ready
//!              ◀═══════ RAM pre-copy rounds ══════ migrate unix:migration-out.sock,
//!                 (agent to agent, TLS 1.3)         carried by the agent  phase pre_copy
//!                                                 poll query-migrate, escalate (policy.rs)
//!                                                 STOP (downtime starts)
//!                                                 [mirror] pre-switchover: complete the mirror
//!                                                   while the guest is stopped, migrate-continue
//!              ◀═══════ last pages + devices ═════ completed           phase completed
//!  RESUME: state running, resumed_unix_ms          QEMU paused (postmigrate): state migrated
//!  nbd-server-stop, announce-self                  until deleted, or resumed by cancel (cont)
//!  first heartbeat: first_heartbeat_unix_ms,
//!  guest_ready
//! ```
//! - Downtime is `resumed_unix_ms` (target's RESUME event) minus `stopped_unix_ms` (source's
//!   STOP event), both QEMU event timestamps; the guest-visible pause is the target's first
//!   heartbeat minus the source's last one (host arrival times).
//! - A failed incoming migration makes the target QEMU exit: the VM is `crashed` with
//!   QEMU's reason, never `running`. A failed or cancelled outgoing one leaves the VM
//!   running on the source.
//! - [`role`] persists the VM's part in `migration.json`, so that a restarted agent
//!   re-adopts a waiting target as waiting, a paused source as `migrated`, and resumes
//!   following a migration in flight.
//! - [`progress`] turns QEMU's statistics into [`MigrationProgress`].
//! - [`stall`] gives up a transfer that makes no progress (a cut link) within seconds;
//!   [`receive_watch`] does the same on the target, for a stream that stops arriving.
//! - [`tunnel`]: the migration stream and the disk mirror's NBD connection run between the
//!   agents over TLS 1.3 (QEMU talks to unix sockets); [`tls`]: this agent's rule and the
//!   tunnels' certificates of the cloud CA; each end checks the other is the host the
//!   controller named.

pub mod cold;
pub mod disk_mirror;
pub mod endpoint;
pub mod incoming;
pub mod outgoing;
pub mod policy;
pub mod progress;
pub mod receive_watch;
pub mod role;
pub mod stall;
pub mod tls;
pub mod tunnel;

use crate::instance::state::CoreStatus;
use nimbus_agent_api::{MigrationProgress, VmRunState};
use nimbus_qemu::{ExitInfo, QmpError};

/// Reason of a source VM whose QEMU ended after the guest moved away.
pub const MIGRATED_AWAY: &str = "the VM migrated to another host";

/// What a migration can fail with (the message ends up in [`MigrationProgress::error`] or
/// in the answer to the request).
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// A QMP command failed.
    #[error("{step} failed")]
    Qmp {
        step: &'static str,
        #[source]
        source: QmpError,
    },
    /// Preparing the endpoints failed.
    #[error("{0}")]
    Setup(String),
    /// The block mirror of the disk failed.
    #[error("disk mirror: {0}")]
    Mirror(String),
    /// QEMU reports the migration failed.
    #[error("QEMU reports the migration failed: {0}")]
    Qemu(String),
    /// The policy gave up.
    #[error("{0}")]
    Timeout(String),
    /// The transfer made no progress for the policy's stall bound.
    #[error(transparent)]
    Stalled(#[from] stall::Stalled),
    /// Cancelled on request.
    #[error("cancelled")]
    Cancelled,
}

impl MigrationError {
    /// A closure wrapping a QMP error with the step that failed.
    pub fn qmp(step: &'static str) -> impl FnOnce(QmpError) -> MigrationError {
        move |source| MigrationError::Qmp { step, source }
    }
}

/// How a VM ends up when its QEMU exits in a migration state; `None` when the ordinary
/// rules apply ([`crate::instance::state::after_exit`]).
///
/// - A source whose guest migrated away is `stopped` (the VM runs elsewhere), not crashed.
/// - A target that had not resumed yet (and was not asked to stop) failed its incoming
///   migration: `crashed`, with QEMU's explanation.
pub fn after_exit(
    status: &CoreStatus,
    stop_requested: bool,
    exit: ExitInfo,
    log_tail: &str,
) -> Option<(VmRunState, Option<String>)> {
    if status.state == VmRunState::Migrated {
        return Some((VmRunState::Stopped, Some(MIGRATED_AWAY.to_string())));
    }
    if status.incoming && !stop_requested {
        let tail = log_tail.trim();
        let reason = if tail.is_empty() {
            format!("incoming migration failed: QEMU exited ({exit})")
        } else {
            format!("incoming migration failed: QEMU exited ({exit}): {tail}")
        };
        return Some((VmRunState::Crashed, Some(reason)));
    }
    None
}

/// The progress a VM reports at agent start: the persisted record of its last outgoing
/// migration, or none.
pub fn initial_progress(dir: &crate::instance::files::VmDir) -> MigrationProgress {
    match role::read(dir) {
        Ok(Some(role::MigrationRole::Outgoing(rec))) => rec.progress,
        _ => role::no_progress(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXIT1: ExitInfo = ExitInfo {
        code: Some(1),
        signal: None,
    };

    #[test]
    fn exits_in_migration_states() {
        let mut s = CoreStatus::defined();
        s.state = VmRunState::Running;
        assert_eq!(after_exit(&s, false, EXIT1, ""), None);
        s.state = VmRunState::Migrated;
        assert_eq!(
            after_exit(&s, false, EXIT1, "x"),
            Some((VmRunState::Stopped, Some(MIGRATED_AWAY.into())))
        );
        s.state = VmRunState::Starting;
        s.incoming = true;
        let (state, reason) = after_exit(
            &s,
            false,
            EXIT1,
            "qemu-system-x86_64: load of migration failed: Invalid argument\n",
        )
        .expect("migration rule");
        assert_eq!(state, VmRunState::Crashed);
        assert_eq!(
            reason.as_deref(),
            Some(
                "incoming migration failed: QEMU exited (exit code 1): \
                 qemu-system-x86_64: load of migration failed: Invalid argument"
            )
        );
        assert_eq!(after_exit(&s, true, EXIT1, ""), None, "asked to stop");
    }
}
