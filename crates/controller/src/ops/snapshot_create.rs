//! Take a snapshot of an instance (with memory while it runs, or of its disk only).
//!
//! ```text
//! record ─────────▶ take ─────────────────────▶ complete
//!  the row, in       the host pauses the VM for    figures recorded, `available`,
//!  `creating` (id    milliseconds, writes memory   the instance's current snapshot
//!  chosen up front)  while it runs on
//!  undo: drop row    undo: the host deletes it
//! ```
//! The VM runs on throughout; a failure anywhere unwinds to nothing: no row, no files on
//! the host, and the instance as it was.

use super::steps::{agent_err, instance, op_params, store_err};
use super::Plan;
use crate::app::App;
use async_trait::async_trait;
use nimbus_agent_api::{SnapshotRequest, SnapshotResult};
use nimbus_ops::{Step, StepContext, StepError};
use nimbus_store::{NewSnapshot, SnapshotFigures};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

/// Parameters of a `snapshot_create` operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateParams {
    pub snapshot_id: Uuid,
    pub name: String,
    /// Memory and device state included.
    pub memory: bool,
    /// The instance's host when the snapshot was asked for: where it is stored.
    pub host: String,
}

pub fn plan(instance: Uuid) -> Plan {
    Plan {
        steps: vec![
            Box::new(Record(instance)),
            Box::new(Take(instance)),
            Box::new(Complete(instance)),
        ],
        during: None,
        after: None,
    }
}

/// Records the snapshot in `creating` (the API did already; a replay finds it).
pub struct Record(pub Uuid);

#[async_trait]
impl Step<App> for Record {
    fn name(&self) -> &'static str {
        "record"
    }

    async fn action(&self, app: &App, s: &StepContext<'_>) -> Result<Value, StepError> {
        let p: CreateParams = op_params(app, s.operation_id).await?;
        let inst = instance(app, self.0).await?;
        let new = NewSnapshot {
            id: p.snapshot_id,
            project: inst.project,
            instance_id: self.0,
            name: p.name,
            memory: p.memory,
            host: p.host,
        };
        app.store()
            .ensure_snapshot(&new, s.operation_id)
            .await
            .map_err(store_err)?;
        Ok(json!({ "snapshot_id": p.snapshot_id }))
    }

    async fn undo(&self, app: &App, s: &StepContext<'_>) -> Result<(), StepError> {
        let p: CreateParams = op_params(app, s.operation_id).await?;
        app.store()
            .delete_snapshot_row(p.snapshot_id)
            .await
            .map_err(store_err)
    }
}

/// Has the host take the snapshot (idempotent per snapshot id).
pub struct Take(pub Uuid);

#[async_trait]
impl Step<App> for Take {
    fn name(&self) -> &'static str {
        "take"
    }

    async fn action(&self, app: &App, s: &StepContext<'_>) -> Result<Value, StepError> {
        let p: CreateParams = op_params(app, s.operation_id).await?;
        s.progress(if p.memory {
            "taking the snapshot: CPU, memory and disk"
        } else {
            "taking the snapshot of the disk"
        })
        .await;
        let agent = app.agent_of(&p.host).await.map_err(super::steps::app_err)?;
        let req = SnapshotRequest {
            snapshot_id: p.snapshot_id,
            memory: p.memory,
        };
        let result = agent.snapshot(self.0, &req).await.map_err(agent_err)?;
        crate::failpoint::hold("snapshot.take").await;
        tracing::info!(instance_id = %self.0, snapshot_id = %p.snapshot_id,
            vm_pause_ms = result.vm_pause_ms, stored_bytes = result.stored_bytes, "snapshot taken");
        serde_json::to_value(&result).map_err(|e| StepError::permanent(e.to_string()))
    }

    async fn undo(&self, app: &App, s: &StepContext<'_>) -> Result<(), StepError> {
        let p: CreateParams = op_params(app, s.operation_id).await?;
        let agent = app.agent_of(&p.host).await.map_err(super::steps::app_err)?;
        agent
            .delete_snapshot(self.0, p.snapshot_id)
            .await
            .map_err(agent_err)?;
        Ok(())
    }
}

/// Records what the snapshot cost and makes it the instance's current snapshot.
pub struct Complete(pub Uuid);

#[async_trait]
impl Step<App> for Complete {
    fn name(&self) -> &'static str {
        "complete"
    }

    async fn action(&self, app: &App, s: &StepContext<'_>) -> Result<Value, StepError> {
        let p: CreateParams = op_params(app, s.operation_id).await?;
        let result: SnapshotResult = s
            .output("take")
            .cloned()
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| StepError::permanent(format!("the take step's output: {e}")))?
            .ok_or_else(|| StepError::permanent("the take step recorded no result"))?;
        let figures = SnapshotFigures {
            vm_pause_us: (result.vm_pause_ms.max(0.0) * 1000.0).round() as u64,
            disk_layer_bytes: result.disk_layer_bytes,
            memory_bytes: result.memory_bytes,
            memory_new_bytes: result.memory_new_bytes,
            stored_bytes: result.stored_bytes,
        };
        app.store()
            .complete_snapshot(p.snapshot_id, &figures)
            .await
            .map_err(store_err)?;
        Ok(json!({ "snapshot_id": p.snapshot_id, "stored_bytes": result.stored_bytes }))
    }
}
