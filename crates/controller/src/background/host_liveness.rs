//! Host liveness: declares hosts whose agents stopped reporting `down` and their instances
//! `error`, and takes them back when they report again.
//!
//! ```text
//!  up --(no report 10 s)--> unreachable --(no report 30 s: fence timeout + margin)--> down
//!   ^                                                                                  |
//!   +------------------------------ reports again -------------------------------------+
//! ```
//!
//! Every pass (each `reconcile_interval`), for a down host: its down mark is recorded once
//! (`down_since`); each of its HA instances that no operation owns is restarted elsewhere
//! (`instance_ha_restart`, higher priority first, if it was running; one whose restart failed is
//! `error` and not retried), and each
//! other instance that no operation owns and that is not already `error` goes `error` with
//! the reason. Nothing is deleted or stopped: the host may be only
//! cut off, and what its agent still runs is learnt again when it reports (the instances'
//! agent generations are forgotten so its next report is applied as it is).

use crate::app::ha::restart_rank;
use crate::app::hosts::liveness;
use crate::app::App;
use crate::background::task::{PassError, Run, Task};
use chrono::{DateTime, Utc};
use nimbus_api::{HostState, InstanceState};
use nimbus_store::{HostRecord, Scope, StoreError};

/// Host liveness as a background task: one controller at a time (one judge of a host, one
/// HA restart per instance), every `reconcile_interval`.
pub struct HostLiveness;

#[async_trait::async_trait]
impl Task for HostLiveness {
    const NAME: &'static str = "host_liveness";
    const RUN: Run = Run::OneController;

    fn interval(&self, app: &App) -> std::time::Duration {
        app.config().reconcile_interval
    }

    async fn pass(&mut self, app: &App) -> Result<(), PassError> {
        Ok(pass(app).await?)
    }
}

/// One pass over all hosts.
pub async fn pass(app: &App) -> Result<(), StoreError> {
    for host in app.store().list_hosts().await? {
        match liveness(&host) {
            HostState::Down => host_down(app, &host).await?,
            HostState::Up => {
                if app.store().mark_host_back(&host.name).await? {
                    tracing::info!(host = %host.name, "host reports again; relearning its instances");
                }
            }
            HostState::Unreachable => {}
        }
    }
    Ok(())
}

async fn host_down(app: &App, host: &HostRecord) -> Result<(), StoreError> {
    let since = match host.down_since {
        Some(t) => t,
        None => {
            let now = app.clock_now();
            if app.store().mark_host_down(&host.name, now).await? {
                tracing::warn!(host = %host.name, last_seen = %host.last_seen, "host down: its agent stopped reporting");
            }
            now
        }
    };
    let reason = down_reason(&host.name, since, host.last_seen);
    let instances = app.store().list_instances(&Scope::All).await?;
    let mine: Vec<_> = instances
        .iter()
        .filter(|i| i.host.as_deref() == Some(host.name.as_str()) && i.operation_id.is_none())
        .collect();
    // HA instances first, in restart order (higher priority, then larger, first); each
    // restart also waits for the higher-ranked ones to be placed.
    let mut ha: Vec<_> = mine.iter().filter(|i| wants_restart(i)).collect();
    ha.sort_by_key(|i| restart_rank(i));
    for inst in ha {
        if let Err(e) = app.start_ha_restart(inst, &host.name).await {
            tracing::warn!(instance_id = %inst.id, error = %e.message, "cannot start the HA restart");
        }
    }
    for inst in mine
        .iter()
        .filter(|i| !wants_restart(i) && i.state != InstanceState::Error)
    {
        let applied = app
            .store()
            .apply_agent_report(
                inst.id,
                inst.generation,
                inst.agent_generation + 1,
                InstanceState::Error,
                Some(&reason),
            )
            .await?;
        if applied {
            tracing::warn!(instance_id = %inst.id, host = %host.name, "instance on a down host: error");
        }
    }
    Ok(())
}

/// An HA instance that was running. One whose restart failed is `error` (with the reason
/// `ha_restart failed: ...`) and waits for its host or an operator; a stopped one stays
/// stopped.
fn wants_restart(i: &nimbus_store::InstanceRecord) -> bool {
    i.ha_restart && i.state == InstanceState::Running
}

/// Why an instance on a down host is `error`, and what the operator can do.
fn down_reason(host: &str, since: DateTime<Utc>, last_seen: DateTime<Utc>) -> String {
    format!(
        "its host {host} is down since {} (no report from its agent since {}); \
         it runs again when the host is back, or elsewhere with `nimbus host evacuate {host}`",
        since.format("%H:%M:%S UTC"),
        last_seen.format("%H:%M:%S UTC"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_names_host_times_and_remedy() {
        let since = DateTime::parse_from_rfc3339("2026-12-05T12:03:10Z")
            .expect("a valid time")
            .with_timezone(&Utc);
        let seen = since - chrono::Duration::seconds(30);
        let r = down_reason("host2", since, seen);
        assert!(r.contains("host2 is down since 12:03:10 UTC"), "{r}");
        assert!(r.contains("since 12:02:40 UTC"), "{r}");
        assert!(r.contains("nimbus host evacuate host2"), "{r}");
    }
}
