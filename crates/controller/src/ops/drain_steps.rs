//! The steps of a host drain.

use super::steps::store_err;
use crate::app::App;
use async_trait::async_trait;
use nimbus_api::{InstanceState, MigrateInstance};
use nimbus_ops::{Step, StepContext, StepError};
use nimbus_store::Scope;
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

    async fn action(&self, app: &App, _s: &StepContext<'_>) -> Result<Value, StepError> {
        app.store()
            .set_host_enabled(&self.0, false)
            .await
            .map_err(store_err)?;
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
        let mut moved = Vec::new();
        let mut failed = Vec::new();
        let mut skipped = Vec::new();
        let mut in_flight: Vec<(String, Uuid)> = Vec::new();
        loop {
            let all = app
                .store()
                .list_instances(&Scope::All)
                .await
                .map_err(store_err)?;
            let mut here: Vec<_> = all
                .into_iter()
                .filter(|i| i.host.as_deref() == Some(self.0.as_str()))
                .collect();
            // Largest first: they take longest and free the most room for the rest.
            here.sort_by(|a, b| b.memory_mib.cmp(&a.memory_mib).then(a.name.cmp(&b.name)));
            // Reap finished migrations.
            let mut still = Vec::new();
            for (name, op) in in_flight.drain(..) {
                let view = app
                    .store()
                    .get_operation(&Scope::All, op)
                    .await
                    .map_err(store_err)?;
                if !view.state.is_final() {
                    still.push((name, op));
                } else if view.state == nimbus_api::OperationState::Succeeded {
                    moved.push(name);
                } else {
                    failed.push(format!("{name}: {}", view.error.unwrap_or_default()));
                }
            }
            in_flight = still;
            let busy: Vec<Uuid> = in_flight.iter().map(|(_, o)| *o).collect();
            let candidates: Vec<_> = here
                .iter()
                .filter(|i| i.operation_id.map(|o| !busy.contains(&o)).unwrap_or(true))
                .filter(|i| {
                    !failed
                        .iter()
                        .any(|f| f.starts_with(&format!("{}:", i.name)))
                })
                .filter(|i| !skipped.contains(&i.name))
                .collect();
            for inst in candidates {
                if in_flight.len() >= DRAIN_PARALLELISM {
                    break;
                }
                if let Some(op) = inst.operation_id {
                    // Another operation acts on it (e.g. a migration started before a restart).
                    in_flight.push((inst.name.clone(), op));
                    continue;
                }
                if !matches!(inst.state, InstanceState::Running | InstanceState::Stopped) {
                    skipped.push(inst.name.clone());
                    continue;
                }
                let caller = crate::app::Caller::system("drain", &inst.project);
                match app
                    .migrate_instance(&caller, &inst.id.to_string(), &MigrateInstance::default())
                    .await
                {
                    Ok(op) => in_flight.push((inst.name.clone(), op.id)),
                    Err(e) => failed.push(format!("{}: {}", inst.name, e.message)),
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
