//! How a migration is configured and made to converge. Everything here is pure: QEMU
//! settings derived from a [`MigrationPolicy`], and the escalation decision taken on the
//! series of pre-copy rounds.
//!
//! # Settings
//! - Bandwidth: the policy's cap, or [`UNCAPPED_BYTES_PER_S`] when it has none. QEMU's own
//!   default (128 MiB/s) is never left in place: it is what keeps busy guests from
//!   converging.
//! - Downtime limit: the policy's budget; QEMU switches over once it estimates that the
//!   remaining dirty memory can be sent within it.
//! - Capabilities: `events`; `auto-converge` and `postcopy-ram` as allowed; `multifd` with
//!   the policy's channel count (QEMU 10.0 cannot combine multifd with post-copy: such a
//!   policy is refused); `pause-before-switchover` when a disk is mirrored, so that the
//!   mirror is completed while the guest is stopped and before the target resumes.
//! - The target enables `postcopy-ram` whenever the host supports it (harmless when the
//!   source does not use it, so the target needs no knowledge of the decision) and
//!   `multifd` only as the policy says (both ends must agree on the channels).
//!
//! # Convergence
//! Pre-copy converges when each round has less to send than the one before. The agent
//! samples QEMU's `remaining` bytes once per round (the dirty set the previous round left,
//! at the first poll that sees the new `dirty-sync-count`). A round *makes progress* when
//! its remaining bytes fall below [`PROGRESS_PCT`] % of the best round so far. When
//! [`STALL_ROUNDS`] rounds pass without progress, the policy escalates, one step at a time,
//! and counts stalls again from the escalation:
//! 1. with `auto_converge`: raise QEMU's vCPU throttle ramp through [`THROTTLE_LEVELS`]
//!    (QEMU throttles by itself once the guest dirties memory faster than half the
//!    transfer rate; a higher initial throttle and step make each throttling round bite
//!    harder);
//! 2. with `allow_postcopy`: switch to post-copy (the guest then runs on the target and
//!    pulls the remaining pages; it always converges, but a network failure during
//!    post-copy loses the VM, so it is the last resort);
//! 3. at `timeout_secs` (unless in post-copy, which cannot be undone): abort. The
//!    migration is cancelled and the VM keeps running on the source.
//!
//! Each escalation is reported in [`MigrationProgress::escalations`] as a sentence, e.g.
//! `round 5: remaining stopped shrinking (66 MiB; no 10% drop since round 2: 63 MiB);
//! auto-converge throttle 20%->50% (+20% per step, now 30%)`.
//!
//! [`MigrationProgress::escalations`]: nimbus_agent_api::MigrationProgress

use nimbus_agent_api::MigrationPolicy;
use nimbus_qemu::qmp::MigrateParameters;
use serde::{Deserialize, Serialize};

/// `max-bandwidth` of an uncapped migration, bytes per second (1 TiB/s: more than any
/// link; QEMU's default of 128 MiB/s must not apply).
pub const UNCAPPED_BYTES_PER_S: u64 = 1 << 40;
/// Rounds without progress before the policy escalates.
pub const STALL_ROUNDS: u64 = 3;
/// A round makes progress when its remaining bytes are below this percentage of the best.
pub const PROGRESS_PCT: u64 = 90;
/// Auto-converge throttle ramps, `(initial %, increment %)`; level 0 is QEMU's default.
pub const THROTTLE_LEVELS: [(u8, u8); 3] = [(20, 10), (50, 20), (80, 20)];
/// Highest vCPU throttle auto-converge may apply, in percent (QEMU's maximum).
pub const MAX_THROTTLE_PCT: u8 = 99;

const MIB: u64 = 1 << 20;

/// Checks a policy before anything is changed; the message says what is wrong.
pub fn validate(policy: &MigrationPolicy) -> Result<(), String> {
    if policy.max_downtime_ms == 0 || policy.max_downtime_ms > 2_000_000 {
        return Err(format!(
            "max_downtime_ms must be 1..=2000000, not {}",
            policy.max_downtime_ms
        ));
    }
    if policy.max_bandwidth_mib_s == Some(0) {
        return Err("max_bandwidth_mib_s must be at least 1 (or absent: uncapped)".into());
    }
    if policy.multifd_channels == Some(0) {
        return Err("multifd_channels must be at least 1 (or absent: one stream)".into());
    }
    if policy.multifd_channels.is_some() && policy.allow_postcopy {
        return Err("QEMU cannot combine multifd with post-copy: choose one".into());
    }
    if policy.timeout_secs == 0 {
        return Err("timeout_secs must be at least 1".into());
    }
    if policy.stall_timeout_secs == 0 {
        return Err("stall_timeout_secs must be at least 1".into());
    }
    Ok(())
}

/// Capabilities of the source QEMU (all set explicitly: earlier attempts leave theirs).
pub fn source_capabilities(policy: &MigrationPolicy, mirror: bool) -> Vec<(&'static str, bool)> {
    vec![
        ("events", true),
        ("auto-converge", policy.auto_converge),
        ("postcopy-ram", policy.allow_postcopy),
        ("multifd", policy.multifd_channels.is_some()),
        ("pause-before-switchover", mirror),
        // Off after every memory snapshot already; here too, whatever left it on.
        ("background-snapshot", false),
    ]
}

/// Parameters of the source QEMU.
pub fn source_parameters(policy: &MigrationPolicy) -> MigrateParameters {
    let (initial, increment) = THROTTLE_LEVELS[0];
    MigrateParameters {
        downtime_limit: Some(policy.max_downtime_ms),
        max_bandwidth: Some(
            policy
                .max_bandwidth_mib_s
                .map_or(UNCAPPED_BYTES_PER_S, |m| m.saturating_mul(MIB)),
        ),
        cpu_throttle_initial: Some(initial),
        cpu_throttle_increment: Some(increment),
        multifd_channels: policy.multifd_channels,
        max_cpu_throttle: Some(MAX_THROTTLE_PCT),
        ..MigrateParameters::default()
    }
}

/// Capabilities of the target QEMU; `postcopy` when the host supports it.
pub fn target_capabilities(policy: &MigrationPolicy, postcopy: bool) -> Vec<(&'static str, bool)> {
    vec![
        ("events", true),
        ("postcopy-ram", postcopy),
        ("multifd", policy.multifd_channels.is_some()),
    ]
}

/// Parameters the target needs, if any.
pub fn target_parameters(policy: &MigrationPolicy) -> Option<MigrateParameters> {
    policy.multifd_channels.map(|n| MigrateParameters {
        multifd_channels: Some(n),
        ..MigrateParameters::default()
    })
}

/// Parameters of a throttle level.
pub fn throttle_parameters(level: usize) -> MigrateParameters {
    let (initial, increment) = THROTTLE_LEVELS[level.min(THROTTLE_LEVELS.len() - 1)];
    MigrateParameters {
        cpu_throttle_initial: Some(initial),
        cpu_throttle_increment: Some(increment),
        ..MigrateParameters::default()
    }
}

/// How far a migration has escalated (persisted with the migration).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ladder {
    /// Index in [`THROTTLE_LEVELS`].
    pub throttle_level: usize,
    /// Post-copy was started.
    pub postcopy: bool,
    /// Round of the last escalation: stalls are counted from the rounds after it.
    pub since_round: u64,
}

/// QEMU's figures at the first poll of a pre-copy round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoundSample {
    /// QEMU's `dirty-sync-count`.
    pub round: u64,
    pub remaining: u64,
    pub throttle_pct: u64,
}

/// What to do to a migration that does not converge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Set the throttle ramp of this level.
    RaiseThrottle { level: usize },
    /// `migrate-start-postcopy`.
    StartPostcopy,
    /// Cancel the migration; the VM keeps running here.
    Abort,
}

/// A decision and the sentence that records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Escalation {
    pub action: Action,
    pub message: String,
}

/// Decides whether to escalate, given the rounds seen so far (in order) and the time the
/// migration has taken. Returns `None` while it converges (or nothing more can be done).
pub fn decide(
    policy: &MigrationPolicy,
    ladder: &Ladder,
    rounds: &[RoundSample],
    elapsed_ms: u64,
) -> Option<Escalation> {
    if ladder.postcopy {
        return None;
    }
    let last_round = rounds.last().map_or(0, |r| r.round);
    if elapsed_ms >= policy.timeout_secs.saturating_mul(1000) {
        return Some(Escalation {
            action: Action::Abort,
            message: format!(
                "round {last_round}: no convergence within {} s; cancelled, the VM keeps \
                 running on the source",
                policy.timeout_secs
            ),
        });
    }
    let stall = stalled(rounds, ladder.since_round)?;
    let why = format!(
        "round {}: remaining stopped shrinking ({} MiB; no {}% drop since round {}: {} MiB)",
        stall.last.round,
        stall.last.remaining / MIB,
        100 - PROGRESS_PCT,
        stall.best.round,
        stall.best.remaining / MIB,
    );
    let next = ladder.throttle_level + 1;
    if policy.auto_converge && next < THROTTLE_LEVELS.len() {
        let (from, _) = THROTTLE_LEVELS[ladder.throttle_level];
        let (to, step) = THROTTLE_LEVELS[next];
        return Some(Escalation {
            action: Action::RaiseThrottle { level: next },
            message: format!(
                "{why}; auto-converge throttle {from}%->{to}% (+{step}% per step, now {}%)",
                stall.last.throttle_pct
            ),
        });
    }
    if policy.allow_postcopy {
        return Some(Escalation {
            action: Action::StartPostcopy,
            message: format!("{why}; switching to post-copy"),
        });
    }
    None
}

/// The ladder after `action` was applied at `round`.
pub fn climb(ladder: &Ladder, action: Action, round: u64) -> Ladder {
    let mut next = ladder.clone();
    next.since_round = round;
    match action {
        Action::RaiseThrottle { level } => next.throttle_level = level,
        Action::StartPostcopy => next.postcopy = true,
        Action::Abort => {}
    }
    next
}

struct Stall {
    best: RoundSample,
    last: RoundSample,
}

/// The best round after `since_round` and the last one, if [`STALL_ROUNDS`] rounds passed
/// since the best without progress.
fn stalled(rounds: &[RoundSample], since_round: u64) -> Option<Stall> {
    let mut window = rounds.iter().filter(|r| r.round > since_round);
    let mut best = *window.next()?;
    let mut last = best;
    for r in window {
        if u128::from(r.remaining) * 100 < u128::from(best.remaining) * u128::from(PROGRESS_PCT) {
            best = *r;
        }
        last = *r;
    }
    (last.round.saturating_sub(best.round) >= STALL_ROUNDS).then_some(Stall { best, last })
}

#[cfg(test)]
mod tests;
