//! Delete a snapshot: the host merges its disk layer into its children and drops memory
//! chunks no other snapshot uses; then its children are handed to its parent.
//!
//! ```text
//! check_snapshot ───▶ delete_on_host ─────────▶ forget
//!  undo: `available`   (POINT OF NO RETURN)      re-parent children, current := parent,
//!                                                drop the row
//! ```

use super::snapshot_steps::{snapshot_agent, snapshot_of, CheckSnapshot, SnapshotParams};
use super::steps::{agent_err, op_params, store_err};
use super::Plan;
use crate::app::App;
use async_trait::async_trait;
use nimbus_api::{SnapshotDeleted, SnapshotState};
use nimbus_ops::{Step, StepContext, StepError};
use serde_json::{json, Value};
use uuid::Uuid;

pub fn plan(instance: Uuid) -> Plan {
    Plan {
        steps: vec![
            Box::new(CheckSnapshot {
                instance,
                during: SnapshotState::Deleting,
            }),
            Box::new(DeleteOnHost(instance)),
            Box::new(ForgetSnapshot),
        ],
        during: None,
        after: None,
    }
}

/// Has the host delete the snapshot (an unknown snapshot counts as deleted).
pub struct DeleteOnHost(pub Uuid);

#[async_trait]
impl Step<App> for DeleteOnHost {
    fn name(&self) -> &'static str {
        "delete_on_host"
    }

    async fn action(&self, app: &App, s: &StepContext<'_>) -> Result<Value, StepError> {
        let snap = snapshot_of(app, s.operation_id).await?;
        s.progress(&format!(
            "deleting snapshot {} on host {}",
            snap.name, snap.host
        ))
        .await;
        let result = snapshot_agent(app, &snap)
            .await?
            .delete_snapshot(self.0, snap.id)
            .await
            .map_err(agent_err)?;
        Ok(json!(SnapshotDeleted {
            snapshot_id: result.snapshot_id,
            freed_bytes: result.freed_bytes,
        }))
    }

    fn is_point_of_no_return(&self, _output: &Value) -> bool {
        true
    }
}

/// Drops the row; its children get its parent (and the current mark, if it had it).
pub struct ForgetSnapshot;

#[async_trait]
impl Step<App> for ForgetSnapshot {
    fn name(&self) -> &'static str {
        "forget"
    }

    async fn action(&self, app: &App, s: &StepContext<'_>) -> Result<Value, StepError> {
        let p: SnapshotParams = op_params(app, s.operation_id).await?;
        app.store()
            .delete_snapshot_row(p.snapshot_id)
            .await
            .map_err(store_err)?;
        Ok(json!({}))
    }
}
