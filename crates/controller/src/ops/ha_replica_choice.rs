//! Which snapshot an HA restart of an instance with a local disk restores (issue 14, part 4,
//! with issue 12's several controllers): the newest one whose replica a live controller
//! holds. Each controller keeps its own replica store and copies every replica from the
//! others (`app::replica_copies`); a controller that dies takes its copies with it, so the
//! newest replicated snapshot may have none left. Newest first, a snapshot is
//! - restorable here when this controller holds its replica;
//! - restorable once copied when a live controller holds it (a copy that fails passes it
//!   over: a live holder that cannot serve it is as good as none);
//! - passed over when no live controller holds it.
//!
//! The first restorable one is used; the newer ones passed over are named with the reason
//! in the operation's output and the instance's reason ([`FromSnapshot::note`]). None
//! restorable: the restart fails saying why for each, and the instance waits for its host.

use super::steps::store_err;
use crate::app::App;
use chrono::{DateTime, Utc};
use nimbus_ops::{StepContext, StepError};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// The snapshot a restart uses, as `choose_restart_host` records it, with the newer ones it
/// passed over and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FromSnapshot {
    pub id: Uuid,
    pub name: String,
    pub taken_at: DateTime<Utc>,
    /// Newer replicated snapshots that could not be used, newest first.
    #[serde(default)]
    pub skipped: Vec<Skipped>,
}

/// A newer replicated snapshot an HA restart did not use, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Skipped {
    pub name: String,
    pub taken_at: DateTime<Utc>,
    pub why: String,
}

impl FromSnapshot {
    /// Read back from `choose_restart_host`'s output (`None`: a restart from a shared disk).
    pub fn of(s: &StepContext<'_>) -> Option<Self> {
        let out = s.output("choose_restart_host")?.get("snapshot")?;
        serde_json::from_value(out.clone()).ok()
    }

    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or_default()
    }

    /// What the user is told: the snapshot used, that later changes are lost, and why each
    /// newer snapshot was not used.
    pub fn note(&self, source: &str) -> String {
        let mut note = format!(
            "restarted from snapshot {} taken at {} on host {source}; changes after it are lost",
            self.name,
            secs(self.taken_at)
        );
        for s in &self.skipped {
            note.push_str(&format!(
                "; the newer snapshot {} (taken at {}) was not used: {}",
                s.name,
                secs(s.taken_at),
                s.why
            ));
        }
        note
    }
}

fn secs(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// A replicated snapshot as the restart sees it: whether this controller holds its replica,
/// and how many live controllers do.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub id: Uuid,
    pub name: String,
    pub taken_at: DateTime<Utc>,
    pub held_here: bool,
    pub live_holders: usize,
}

/// Why a snapshot whose replica no live controller holds is passed over.
pub const NO_LIVE_HOLDER: &str =
    "no live controller holds its replica (the controllers that held it are gone)";

/// Chooses, among `candidates` (newest first), the newest snapshot restorable from a live
/// controller: one this controller holds, or one it copies from a live holder with `copy`
/// (a copy that fails passes it over too). Answers it with the newer ones passed over, or
/// every reason when none is restorable.
pub async fn choose<F, Fut>(
    candidates: Vec<Candidate>,
    mut copy: F,
) -> Result<FromSnapshot, Vec<Skipped>>
where
    F: FnMut(Uuid) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let mut skipped = Vec::new();
    for c in candidates {
        let why = if c.held_here {
            None
        } else if c.live_holders == 0 {
            Some(NO_LIVE_HOLDER.to_string())
        } else {
            copy(c.id)
                .await
                .err()
                .map(|e| format!("its replica could not be copied from a live controller: {e}"))
        };
        match why {
            None => {
                return Ok(FromSnapshot {
                    id: c.id,
                    name: c.name,
                    taken_at: c.taken_at,
                    skipped,
                })
            }
            Some(why) => skipped.push(Skipped {
                name: c.name,
                taken_at: c.taken_at,
                why,
            }),
        }
    }
    Err(skipped)
}

/// The newest snapshot of `instance` restorable from a live controller (copied to this one
/// if need be), or why it cannot restart elsewhere.
pub async fn restorable_replica(
    app: &App,
    instance: Uuid,
    source: &str,
) -> Result<FromSnapshot, StepError> {
    let ttl = app.config().lease_ttl;
    let mut candidates = Vec::new();
    for snap in app
        .store()
        .replicated_snapshots(instance)
        .await
        .map_err(store_err)?
    {
        let live_holders = app
            .store()
            .live_replica_holders(snap.id, ttl)
            .await
            .map_err(store_err)?
            .len();
        candidates.push(Candidate {
            held_here: app.holds_replica(instance, snap.id),
            id: snap.id,
            name: snap.name,
            taken_at: snap.created_at,
            live_holders,
        });
    }
    let copy = |sid| async move {
        app.ensure_replica(instance, sid)
            .await
            .map(|_copied| ())
            .map_err(|e| e.message)
    };
    let cannot = "it cannot be restarted elsewhere (that would start it from nothing); it \
                  runs again when";
    match choose(candidates, copy).await {
        Ok(chosen) => {
            for s in &chosen.skipped {
                tracing::warn!(instance_id = %instance, snapshot = %s.name, why = %s.why,
                    "HA restart: a newer snapshot passed over");
            }
            Ok(chosen)
        }
        Err(skipped) if skipped.is_empty() => Err(StepError::permanent(format!(
            "its disk is local to host {source}, which is down, and it has no snapshot \
             replicated to the controllers: {cannot} {source} is back"
        ))),
        Err(skipped) => {
            let whys: Vec<String> = skipped
                .iter()
                .map(|s| format!("{}: {}", s.name, s.why))
                .collect();
            Err(StepError::permanent(format!(
                "its disk is local to host {source}, which is down, and none of its replicated \
                 snapshots can be restored from a live controller ({}): {cannot} {source} is \
                 back",
                whys.join("; ")
            )))
        }
    }
}

#[cfg(test)]
mod tests;
