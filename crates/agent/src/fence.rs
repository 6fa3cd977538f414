//! Self-fencing: an agent cut off from the controller for longer than the fence timeout
//! stops its HA VMs, because the controller will restart them on another host (see
//! [`nimbus_agent_api::liveness`] for the timeouts and why the order is safe).
//!
//! The clock starts at the moment the agent *sent* its last registration that the controller
//! answered (never after the controller recorded it). That moment is kept in the state
//! directory (`controller-contact`, unix ms), so an agent restarted while cut off counts from
//! its predecessor's last contact, not from its own start. Each fenced VM is recorded in
//! `fence.log` (one JSON line: when, which VM, how long the controller had been silent) and
//! logged; the VM stays defined and stopped: nothing here starts it again, and the controller
//! decides what becomes of it.

use crate::agent::Agent;
use nimbus_agent_api::liveness::FENCE_TIMEOUT;
use nimbus_agent_api::StopRequest;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How often the fence timeout is checked.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// How long a forced stop may take before the fence gives up on a VM for this round.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// When the controller last answered this host.
pub struct Contact {
    file: PathBuf,
    last: Mutex<Instant>,
}

impl Contact {
    /// The last contact recorded in `state_dir` (none recorded: now, as a new host runs no
    /// VM yet).
    pub fn load(state_dir: &Path) -> Self {
        let file = state_dir.join("controller-contact");
        let now = Instant::now();
        let last = std::fs::read_to_string(&file)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(|ms| {
                let ago = unix_ms(SystemTime::now()).saturating_sub(ms);
                now.checked_sub(Duration::from_millis(ago)).unwrap_or(now)
            })
            .unwrap_or(now);
        Self {
            file,
            last: Mutex::new(last),
        }
    }

    /// The controller answered a registration sent at `sent` (`sent_wall` on the wall clock).
    pub fn reached(&self, sent: Instant, sent_wall: SystemTime) {
        {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            if sent <= *last {
                return;
            }
            *last = sent;
        }
        if let Err(e) = std::fs::write(&self.file, unix_ms(sent_wall).to_string()) {
            tracing::warn!(file = %self.file.display(), error = %e, "cannot record the last controller contact");
        }
    }

    /// How long the controller has been silent.
    pub fn silence(&self) -> Duration {
        self.last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Checks the fence timeout forever (abort the task to stop).
pub async fn fence_loop(agent: Agent, contact: std::sync::Arc<Contact>) {
    let mut tick = tokio::time::interval(CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let silence = contact.silence();
        if silence > FENCE_TIMEOUT {
            fence(&agent, silence).await;
        }
    }
}

/// Stops every HA VM that still has a QEMU.
async fn fence(agent: &Agent, silence: Duration) {
    for vm in agent.manager().handles() {
        if !vm.spec().ha || !vm.has_qemu() || vm.is_deleted() {
            continue;
        }
        let id = vm.id();
        tracing::warn!(instance_id = %id, silent_s = silence.as_secs(), "fencing: the controller is unreachable; stopping this HA VM, which will be restarted elsewhere");
        let stop = StopRequest {
            force: true,
            timeout_secs: 0,
        };
        match tokio::time::timeout(STOP_TIMEOUT, vm.stop(stop)).await {
            Ok(Ok(_)) => record(agent.state_dir(), id, silence),
            Ok(Err(e)) => {
                tracing::error!(instance_id = %id, error = %e, "fencing: cannot stop the VM")
            }
            Err(_) => {
                tracing::error!(instance_id = %id, "fencing: the VM did not stop in time; retrying")
            }
        }
    }
}

/// Appends a fenced VM to `fence.log`.
fn record(state_dir: &Path, id: uuid::Uuid, silence: Duration) {
    let line = serde_json::json!({
        "fenced_at_unix_ms": unix_ms(SystemTime::now()),
        "vm": id,
        "controller_silent_ms": silence.as_millis() as u64,
    });
    let path = state_dir.join("fence.log");
    let res = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| writeln!(f, "{line}"));
    if let Err(e) = res {
        tracing::warn!(file = %path.display(), error = %e, "cannot record a fenced VM");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contact_survives_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = Contact::load(dir.path());
        assert!(
            c.silence() < Duration::from_secs(1),
            "no record: counts from now"
        );
        let wall = SystemTime::now() - Duration::from_secs(15);
        let sent = Instant::now() - Duration::from_secs(15);
        // An older answer than the current mark changes nothing in memory...
        c.reached(sent, wall);
        assert!(c.silence() < Duration::from_secs(1));
        // ...but a restarted agent counts from what its predecessor recorded.
        std::fs::write(
            dir.path().join("controller-contact"),
            unix_ms(wall).to_string(),
        )
        .expect("write");
        let again = Contact::load(dir.path());
        let s = again.silence();
        assert!(
            s >= Duration::from_secs(14) && s < Duration::from_secs(17),
            "{s:?}"
        );
        // A newer contact resets the clock and is recorded.
        again.reached(Instant::now(), SystemTime::now());
        assert!(again.silence() < Duration::from_secs(1));
        let third = Contact::load(dir.path());
        assert!(third.silence() < Duration::from_secs(2));
    }
}
