//! The steps of a host drain.

use super::steps::store_err;
use crate::app::App;
use async_trait::async_trait;
use nimbus_api::{InstanceState, MigrateInstance};
use nimbus_ops::{Step, StepContext, StepError};
use nimbus_store::{InstanceRecord, Scope};
use serde_json::{json, Value};
use std::time::Duration;
use uuid::Uuid;

/// Takes a host out of placement.
pub struct DisableHost(pub String);

#[async_trait]
impl Step<App> for DisableHost {
    fn name(&self) -> &'static str {
        "disable_host"
    }

    async fn action(&self, app: &App, s: &StepContext<'_>) -> Result<Value, StepError> {
        app.store()
            .set_host_enabled(&self.0, false)
            .await
            .map_err(store_err)?;
        crate::failpoint::hold("drain.disable_host").await;
        s.progress(&format!("host {} disabled", self.0)).await;
        Ok(json!({ "host": self.0 }))
    }
}

/// How many instances a drain moves at once.
const DRAIN_PARALLELISM: usize = 2;

/// Moves every instance off the host, largest first, a few at a time: running ones live,
/// stopped ones cold. Instances in any other state (error, ...) stay, and are named.
pub struct Evacuate(pub String);

#[async_trait]
impl Step<App> for Evacuate {
    fn name(&self) -> &'static str {
        "evacuate"
    }

    async fn action(&self, app: &App, s: &StepContext<'_>) -> Result<Value, StepError> {
        // Instances are tracked by id: names are unique only within a project.
        let mut moved = Vec::new();
        let mut failed: Vec<(Uuid, String)> = Vec::new();
        let mut skipped: Vec<(Uuid, String)> = Vec::new();
        let mut in_flight: Vec<(Uuid, String, Uuid)> = Vec::new();
        loop {
            let all = app
                .store()
                .list_instances(&Scope::All)
                .await
                .map_err(store_err)?;
            // Reap finished migrations.
            let mut still = Vec::new();
            for (id, label, op) in in_flight.drain(..) {
                let view = app
                    .store()
                    .get_operation(&Scope::All, op)
                    .await
                    .map_err(store_err)?;
                if !view.state.is_final() {
                    still.push((id, label, op));
                } else if view.state == nimbus_api::OperationState::Succeeded {
                    moved.push(label);
                } else {
                    failed.push((id, format!("{label}: {}", view.error.unwrap_or_default())));
                }
            }
            in_flight = still;
            let done: Vec<Uuid> = failed
                .iter()
                .chain(&skipped)
                .map(|(id, _)| *id)
                .chain(in_flight.iter().map(|(id, ..)| *id))
                .collect();
            for inst in candidates(&self.0, all, &done) {
                if in_flight.len() >= DRAIN_PARALLELISM {
                    break;
                }
                let label = format!("{}/{}", inst.project, inst.name);
                if let Some(op) = inst.operation_id {
                    // Another operation acts on it (e.g. a migration started before a restart).
                    in_flight.push((inst.id, label, op));
                    continue;
                }
                if !matches!(inst.state, InstanceState::Running | InstanceState::Stopped) {
                    skipped.push((inst.id, label));
                    continue;
                }
                let caller = crate::app::Caller::system("drain", &inst.project);
                match app
                    .migrate_instance(&caller, &inst.id.to_string(), &MigrateInstance::default())
                    .await
                {
                    Ok(op) => in_flight.push((inst.id, label, op.id)),
                    Err(e) => failed.push((inst.id, format!("{label}: {}", e.message))),
                }
            }
            s.progress(&format!(
                "{} moved, {} moving, {} failed, {} instance(s) neither running nor stopped left in place",
                moved.len(),
                in_flight.len(),
                failed.len(),
                skipped.len()
            ))
            .await;
            if in_flight.is_empty() {
                break;
            }
            if s.cancel_requested().await {
                return Err(StepError::Cancelled);
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let failed: Vec<String> = failed.into_iter().map(|(_, f)| f).collect();
        let skipped: Vec<String> = skipped.into_iter().map(|(_, l)| l).collect();
        if !failed.is_empty() {
            return Err(StepError::permanent(format!(
                "{} instance(s) could not move: {}",
                failed.len(),
                failed.join("; ")
            )));
        }
        Ok(json!({ "moved": moved, "skipped": skipped }))
    }
}

/// The instances on `host` the drain has not dealt with yet (`done`: moving, failed or
/// skipped), largest first: they take longest and free the most room for the rest.
fn candidates(host: &str, all: Vec<InstanceRecord>, done: &[Uuid]) -> Vec<InstanceRecord> {
    let mut here: Vec<_> = all
        .into_iter()
        .filter(|i| i.host.as_deref() == Some(host) && !done.contains(&i.id))
        .collect();
    here.sort_by(|a, b| {
        b.memory_mib
            .cmp(&a.memory_mib)
            .then_with(|| a.name.cmp(&b.name))
            .then_with(|| a.project.cmp(&b.project))
    });
    here
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn inst(project: &str, name: &str, memory_mib: u64) -> InstanceRecord {
        InstanceRecord {
            id: Uuid::new_v4(),
            project: project.into(),
            name: name.into(),
            flavor: "small".into(),
            image: "default".into(),
            image_project: "default".into(),
            vcpus: 1,
            memory_mib,
            disk_gib: 1,
            host: Some("host1".into()),
            state: InstanceState::Running,
            reason: None,
            ready: None,
            ip: None,
            mac: None,
            group_id: None,
            placement_group: None,
            ha_restart: false,
            ha_priority: nimbus_api::HA_PRIORITY_MEDIUM,
            operation_id: None,
            generation: 1,
            agent_generation: 0,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    /// Two projects may both have a `web`: one that failed to move must not keep the
    /// other one on the host (they were matched by name).
    #[test]
    fn same_names_in_two_projects_are_two_instances() {
        let (a, b) = (inst("alpha", "web", 512), inst("beta", "web", 256));
        let mut elsewhere = inst("alpha", "db", 4096);
        elsewhere.host = Some("host2".into());
        let all = vec![a.clone(), b.clone(), elsewhere];
        let left = candidates("host1", all.clone(), &[a.id]);
        assert_eq!(left, vec![b.clone()]);
        let order: Vec<Uuid> = candidates("host1", all, &[]).iter().map(|i| i.id).collect();
        assert_eq!(order, vec![a.id, b.id], "largest first");
    }
}
