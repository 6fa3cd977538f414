//! Health and convergence of a group's members. Pure: the autoscaler feeds it what the
//! store and the agents say.

use chrono::{DateTime, Utc};
use nimbus_api::InstanceState;
use uuid::Uuid;

/// A running member whose guest has not written a heartbeat for this long is replaced.
pub const HEARTBEAT_TIMEOUT_MS: u64 = 30_000;

/// What the autoscaler knows of one member.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberObs {
    pub id: Uuid,
    pub name: String,
    pub state: InstanceState,
    pub reason: Option<String>,
    /// An operation (create, delete, ...) acts on it now.
    pub busy: bool,
    /// It holds a host (a member whose create failed before placement never had one).
    pub placed: bool,
    pub created_at: DateTime<Utc>,
    /// Milliseconds since the guest's last heartbeat, as its agent reports it.
    pub heartbeat_age_ms: Option<u64>,
    /// Average CPU use over the group's window.
    pub cpu_percent: Option<f64>,
}

/// Why `m` must be replaced, if it must: it is in `error` (QEMU died, a create failed), it
/// was stopped, or its guest's heartbeat stopped while it runs.
pub fn unhealthy(m: &MemberObs) -> Option<String> {
    if m.busy {
        return None;
    }
    match m.state {
        InstanceState::Error => Some(format!(
            "it is in error: {}",
            m.reason.as_deref().unwrap_or("no reason given")
        )),
        InstanceState::Stopped => Some("it was stopped".into()),
        InstanceState::Running => m
            .heartbeat_age_ms
            .filter(|age| *age > HEARTBEAT_TIMEOUT_MS)
            .map(|age| format!("its guest sent no heartbeat for {} s", age.div_ceil(1000))),
        _ => None,
    }
}

/// The members that count towards the group's size: all but those being deleted and those
/// that are to be replaced.
pub fn counted(members: &[MemberObs]) -> Vec<&MemberObs> {
    members
        .iter()
        .filter(|m| m.state != InstanceState::Deleting && unhealthy(m).is_none())
        .collect()
}

/// What it takes to bring the group to `desired`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Convergence {
    /// Members to create.
    pub create: u32,
    /// Members to delete (scale-in), newest first.
    pub remove: Vec<Uuid>,
}

/// Compares the counted members with `desired`. A scale-in removes the newest members that
/// no operation acts on (members still being built are removed once they are done).
pub fn converge(desired: u32, members: &[MemberObs]) -> Convergence {
    let counted = counted(members);
    let current = counted.len() as u32;
    if current < desired {
        return Convergence {
            create: desired - current,
            remove: Vec::new(),
        };
    }
    let mut idle: Vec<&&MemberObs> = counted.iter().filter(|m| !m.busy).collect();
    idle.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.name.cmp(&a.name)));
    Convergence {
        create: 0,
        remove: idle
            .into_iter()
            .take((current - desired) as usize)
            .map(|m| m.id)
            .collect(),
    }
}

/// The group's average CPU use when it is steady (every counted member running, idle and
/// measured over the window, and no more of them than desired): the policy decides only
/// then, so instances still booting do not skew the average. Fewer than desired happens
/// when a scale-out was refused (capacity, quota): the policy still decides from those.
/// Returns (members, average).
pub fn steady_average(desired: u32, members: &[MemberObs]) -> Option<(u32, f64)> {
    let counted = counted(members);
    if counted.len() as u32 > desired || counted.is_empty() {
        return None;
    }
    let mut sum = 0.0;
    for m in &counted {
        if m.busy || m.state != InstanceState::Running {
            return None;
        }
        sum += m.cpu_percent?;
    }
    Some((counted.len() as u32, sum / counted.len() as f64))
}
