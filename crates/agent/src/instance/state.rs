//! The persisted part of a VM's status and the pure decisions of its state machine.

use chrono::{DateTime, Utc};
use nimbus_agent_api::VmRunState;
use nimbus_qemu::ExitInfo;
use serde::{Deserialize, Serialize};

/// What the last request asked the VM to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Intent {
    Run,
    Stop,
}

/// The status fields the actor owns, persisted in `state.json` on every change so that a
/// restarted agent continues the generation and knows the last intent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CoreStatus {
    pub state: VmRunState,
    pub generation: u64,
    pub reason: Option<String>,
    pub pid: Option<u32>,
    pub guest_ready: bool,
    /// What made the guest ready, while `guest_ready`.
    #[serde(default)]
    pub ready_via: Option<nimbus_api::ReadySource>,
    /// Unix ms at which the guest last (re)booted here: only a readiness report made after
    /// it counts.
    #[serde(default)]
    pub booted_unix_ms: u64,
    pub started_at: Option<DateTime<Utc>>,
    pub intent: Intent,
    /// Offset in `console.log` from which the ready marker is looked for (the end of the
    /// log when QEMU was launched or the guest last reset).
    #[serde(default)]
    pub console_offset: u64,
    /// QEMU waits for an incoming migration (until its RESUME event).
    #[serde(default)]
    pub incoming: bool,
    /// Unix ms of the last RESUME event of the current QEMU.
    #[serde(default)]
    pub resumed_unix_ms: Option<u64>,
    /// Unix ms (host) of the first heartbeat line from the current QEMU.
    #[serde(default)]
    pub first_heartbeat_unix_ms: Option<u64>,
}

impl CoreStatus {
    /// A freshly defined VM.
    pub fn defined() -> Self {
        Self {
            state: VmRunState::Stopped,
            generation: 1,
            reason: None,
            pid: None,
            guest_ready: false,
            ready_via: None,
            booted_unix_ms: 0,
            started_at: None,
            intent: Intent::Stop,
            console_offset: 0,
            incoming: false,
            resumed_unix_ms: None,
            first_heartbeat_unix_ms: None,
        }
    }
}

/// Reason given for a VM whose QEMU vanished while no agent watched it.
pub const GONE_WHILE_DOWN: &str = "QEMU process exited while the agent was down";

/// Reason given when the guest powered itself off.
pub const GUEST_POWERED_OFF: &str = "guest powered off";

/// How a VM ends up after its QEMU exited.
///
/// A requested stop ends in `stopped`; a guest-initiated power-off (SHUTDOWN with
/// `guest: true`) too, with a reason; anything else is a crash explained by QEMU's last
/// words (or its exit status when it said nothing).
pub fn after_exit(
    stop_requested: bool,
    guest_powered_off: bool,
    exit: ExitInfo,
    log_tail: &str,
) -> (VmRunState, Option<String>) {
    if stop_requested {
        return (VmRunState::Stopped, None);
    }
    if guest_powered_off {
        return (VmRunState::Stopped, Some(GUEST_POWERED_OFF.to_string()));
    }
    let tail = log_tail.trim();
    let reason = if tail.is_empty() {
        format!("QEMU exited unexpectedly ({exit})")
    } else {
        format!("QEMU exited unexpectedly ({exit}): {tail}")
    };
    (VmRunState::Crashed, Some(reason))
}

/// The state of a VM found on disk when the agent starts and its QEMU is *not* running.
/// Stopped and crashed VMs stay as they were; a VM that should be running is `stopped` if
/// the last intent was to stop it (the stop completed while the agent was away), otherwise
/// it crashed.
pub fn after_agent_restart(persisted: &CoreStatus) -> (VmRunState, Option<String>) {
    match persisted.state {
        VmRunState::Stopped | VmRunState::Crashed => (persisted.state, persisted.reason.clone()),
        VmRunState::Migrated => (
            VmRunState::Stopped,
            Some(crate::migration::MIGRATED_AWAY.to_string()),
        ),
        VmRunState::Starting | VmRunState::Running | VmRunState::Stopping => {
            if persisted.intent == Intent::Stop {
                (VmRunState::Stopped, None)
            } else {
                (VmRunState::Crashed, Some(GONE_WHILE_DOWN.to_string()))
            }
        }
    }
}

/// What a start request does in a given state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAction {
    /// Already running: nothing to do (start is idempotent).
    AlreadyRunning,
    /// Launch QEMU.
    Launch,
    /// A stop is in progress, or the VM migrated away.
    Refuse,
}

/// Decides a start request.
pub fn on_start(state: VmRunState) -> StartAction {
    match state {
        VmRunState::Running | VmRunState::Starting => StartAction::AlreadyRunning,
        // A migrated VM runs elsewhere: resume it here with a migration cancel instead.
        VmRunState::Stopping | VmRunState::Migrated => StartAction::Refuse,
        VmRunState::Stopped | VmRunState::Crashed => StartAction::Launch,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KILLED: ExitInfo = ExitInfo {
        code: None,
        signal: Some(9),
    };

    #[test]
    fn requested_stop_is_stopped() {
        assert_eq!(
            after_exit(true, true, KILLED, "x"),
            (VmRunState::Stopped, None)
        );
    }

    #[test]
    fn guest_poweroff_is_stopped_with_reason() {
        let (state, reason) = after_exit(false, true, KILLED, "");
        assert_eq!(state, VmRunState::Stopped);
        assert_eq!(reason.as_deref(), Some(GUEST_POWERED_OFF));
    }

    #[test]
    fn unexpected_exit_is_a_crash_with_qemu_words() {
        let (state, reason) = after_exit(false, false, KILLED, "qemu: fatal: oops\n");
        assert_eq!(state, VmRunState::Crashed);
        assert_eq!(
            reason.as_deref(),
            Some("QEMU exited unexpectedly (killed by signal 9): qemu: fatal: oops")
        );
        let (_, reason) = after_exit(false, false, KILLED, "  ");
        assert_eq!(
            reason.as_deref(),
            Some("QEMU exited unexpectedly (killed by signal 9)")
        );
    }

    #[test]
    fn restart_without_qemu() {
        let mut s = CoreStatus::defined();
        assert_eq!(after_agent_restart(&s), (VmRunState::Stopped, None));
        s.state = VmRunState::Running;
        s.intent = Intent::Run;
        assert_eq!(
            after_agent_restart(&s),
            (VmRunState::Crashed, Some(GONE_WHILE_DOWN.into()))
        );
        s.state = VmRunState::Stopping;
        s.intent = Intent::Stop;
        assert_eq!(after_agent_restart(&s), (VmRunState::Stopped, None));
        s.state = VmRunState::Migrated;
        assert_eq!(
            after_agent_restart(&s),
            (
                VmRunState::Stopped,
                Some(crate::migration::MIGRATED_AWAY.into())
            )
        );
        s.state = VmRunState::Crashed;
        s.reason = Some("earlier".into());
        assert_eq!(
            after_agent_restart(&s),
            (VmRunState::Crashed, Some("earlier".into()))
        );
    }

    #[test]
    fn start_decisions() {
        assert_eq!(on_start(VmRunState::Running), StartAction::AlreadyRunning);
        assert_eq!(on_start(VmRunState::Stopping), StartAction::Refuse);
        assert_eq!(on_start(VmRunState::Crashed), StartAction::Launch);
        assert_eq!(on_start(VmRunState::Stopped), StartAction::Launch);
        assert_eq!(on_start(VmRunState::Migrated), StartAction::Refuse);
    }

    #[test]
    fn persisted_form_round_trips() {
        let mut s = CoreStatus::defined();
        s.started_at = Some(Utc::now());
        let json = serde_json::to_string(&s).expect("serialize");
        assert_eq!(serde_json::from_str::<CoreStatus>(&json).expect("parse"), s);
    }
}
