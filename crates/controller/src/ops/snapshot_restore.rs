//! Restore an instance to one of its snapshots.
//!
//! ```text
//! check_snapshot ─────▶ restore ─────────────────────────▶ record
//!  still there, on the    the host validates the manifest     instance state from the host,
//!  instance's host        and every checksum, then replaces   current snapshot := this one,
//!  undo: `available`      the QEMU by one resumed from it     snapshot `available` again
//!                         (POINT OF NO RETURN)
//! ```
//! A snapshot that fails validation is refused by the host before it touches the VM, so
//! that failure unwinds cleanly: the VM runs on as it was.

use super::snapshot_steps::{snapshot_agent, snapshot_of, CheckSnapshot};
use super::steps::{agent_err, instance_state_of, store_err};
use super::Plan;
use crate::app::App;
use async_trait::async_trait;
use nimbus_agent_api::{RestoreRequest, RestoreResult};
use nimbus_api::{InstanceState, SnapshotRestored, SnapshotState};
use nimbus_ops::{Step, StepContext, StepError};
use serde_json::{json, Value};
use uuid::Uuid;

pub fn plan(instance: Uuid) -> Plan {
    Plan {
        steps: vec![
            Box::new(CheckSnapshot {
                instance,
                during: SnapshotState::Restoring,
            }),
            Box::new(Restore(instance)),
            Box::new(RecordRestore(instance)),
        ],
        during: None,
        after: None,
    }
}

/// Has the host restore the VM to the snapshot (clock stepped to real time afterwards).
pub struct Restore(pub Uuid);

#[async_trait]
impl Step<App> for Restore {
    fn name(&self) -> &'static str {
        "restore"
    }

    async fn action(&self, app: &App, s: &StepContext<'_>) -> Result<Value, StepError> {
        let snap = snapshot_of(app, s.operation_id).await?;
        s.progress(&format!(
            "validating snapshot {} and restoring the VM",
            snap.name
        ))
        .await;
        let result = snapshot_agent(app, &snap)
            .await?
            .restore_snapshot(self.0, snap.id, &RestoreRequest { step_clock: true })
            .await
            .map_err(agent_err)?;
        tracing::info!(instance_id = %self.0, snapshot_id = %snap.id,
            running_ms = result.running_ms, first_heartbeat_ms = ?result.first_heartbeat_ms, "restored");
        serde_json::to_value(&result).map_err(|e| StepError::permanent(e.to_string()))
    }

    fn is_point_of_no_return(&self, _output: &Value) -> bool {
        true
    }
}

/// Applies the restore: the instance's state as the host reports it, its current snapshot.
pub struct RecordRestore(pub Uuid);

#[async_trait]
impl Step<App> for RecordRestore {
    fn name(&self) -> &'static str {
        "record"
    }

    async fn action(&self, app: &App, s: &StepContext<'_>) -> Result<Value, StepError> {
        let result: RestoreResult = s
            .output("restore")
            .cloned()
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| StepError::permanent(format!("the restore step's output: {e}")))?
            .ok_or_else(|| StepError::permanent("the restore step recorded no result"))?;
        let state = instance_state_of(result.status.state).unwrap_or(InstanceState::Running);
        let store = app.store();
        store
            .set_instance_state(self.0, state, result.status.reason.as_deref())
            .await
            .map_err(store_err)?;
        store
            .set_current_snapshot(self.0, Some(result.snapshot_id))
            .await
            .map_err(store_err)?;
        store
            .end_snapshot_operation(result.snapshot_id, SnapshotState::Available)
            .await
            .map_err(store_err)?;
        let summary = SnapshotRestored {
            snapshot_id: result.snapshot_id,
            running_ms: result.running_ms,
            first_heartbeat_ms: result.first_heartbeat_ms,
        };
        let mut out = json!(summary);
        out["state"] = json!(state);
        Ok(out)
    }
}
