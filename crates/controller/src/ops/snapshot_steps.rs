//! Steps shared by the snapshot operations (restore, delete).

use super::steps::{instance, op_params, store_err};
use crate::app::App;
use async_trait::async_trait;
use nimbus_agent_api::AgentClient;
use nimbus_api::SnapshotState;
use nimbus_ops::{Outcome, Step, StepContext, StepError};
use nimbus_store::{SnapshotRecord, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

/// Parameters of an operation on an existing snapshot (restore, delete, clone).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotParams {
    pub snapshot_id: Uuid,
}

/// The snapshot operation `op` acts on.
pub(crate) async fn snapshot_of(app: &App, op: Uuid) -> Result<SnapshotRecord, StepError> {
    let p: SnapshotParams = op_params(app, op).await?;
    app.store()
        .get_snapshot_by_id(p.snapshot_id)
        .await
        .map_err(store_err)
}

/// The agent of the host a snapshot lives on.
pub(crate) async fn snapshot_agent(
    app: &App,
    snap: &SnapshotRecord,
) -> Result<AgentClient, StepError> {
    app.agent_of(&snap.host)
        .await
        .map_err(super::steps::app_err)
}

/// Checks that the snapshot is still there, marked for this operation (`during`), and on
/// the host its instance runs on. Undo: the snapshot is `available` again.
pub struct CheckSnapshot {
    pub instance: Uuid,
    pub during: SnapshotState,
}

#[async_trait]
impl Step<App> for CheckSnapshot {
    fn name(&self) -> &'static str {
        "check_snapshot"
    }

    async fn action(&self, app: &App, s: &StepContext<'_>) -> Result<Value, StepError> {
        let snap = snapshot_of(app, s.operation_id).await?;
        let inst = instance(app, self.instance).await?;
        if snap.state != self.during || snap.operation_id != Some(s.operation_id) {
            return Err(StepError::permanent(format!(
                "snapshot {} is {}, not {} for this operation",
                snap.name, snap.state, self.during
            )));
        }
        if inst.host.as_deref() != Some(snap.host.as_str()) {
            return Err(StepError::permanent(format!(
                "snapshot {} lives on host {}, and instance {} is no longer there",
                snap.name, snap.host, inst.name
            )));
        }
        Ok(json!({ "snapshot": snap.name, "host": snap.host }))
    }

    async fn undo(&self, app: &App, s: &StepContext<'_>) -> Result<(), StepError> {
        let p: SnapshotParams = op_params(app, s.operation_id).await?;
        match app.store().get_snapshot_by_id(p.snapshot_id).await {
            Ok(snap) if snap.operation_id == Some(s.operation_id) => app
                .store()
                .end_snapshot_operation(snap.id, SnapshotState::Available)
                .await
                .map_err(store_err),
            Ok(_) | Err(StoreError::NotFound { .. }) => Ok(()),
            Err(e) => Err(store_err(e)),
        }
    }
}

/// Leaves no snapshot marked by operation `op` once it ended: `available` again, unless the
/// operation failed without undoing what it did, which leaves the snapshot in `error` (it
/// can still be deleted). Idempotent.
pub(crate) async fn settle(app: &App, op: Uuid, outcome: &Outcome) -> Result<(), StoreError> {
    let Ok(params) = app.store().operation_params(op).await else {
        return Ok(());
    };
    let Ok(p) = serde_json::from_value::<SnapshotParams>(params) else {
        return Ok(());
    };
    match app.store().get_snapshot_by_id(p.snapshot_id).await {
        Ok(snap) if snap.operation_id == Some(op) => {
            let state = match outcome {
                Outcome::Failed { unwound: false, .. } => SnapshotState::Error,
                _ => SnapshotState::Available,
            };
            if state == SnapshotState::Error {
                tracing::warn!(operation_id = %op, snapshot_id = %snap.id, "snapshot left in error by a failed operation");
            }
            app.store().end_snapshot_operation(snap.id, state).await
        }
        Ok(_) | Err(StoreError::NotFound { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}
