//! Delete a scaling group: the request marked it `deleting` (so the autoscaler leaves it
//! alone); delete every member through its own delete operation, then the group's record.
//! Cancelling while members are being deleted makes the group active again (the autoscaler
//! then brings it back to its desired size).

use super::steps::{app_err, store_err};
use super::Plan;
use crate::app::App;
use async_trait::async_trait;
use nimbus_api::OperationKind;
use nimbus_ops::{Step, StepContext, StepError};
use nimbus_store::StoreError;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;
use uuid::Uuid;

pub fn plan(group: Uuid) -> Plan {
    Plan {
        steps: vec![Box::new(DeleteMembers(group)), Box::new(ForgetGroup(group))],
        during: None,
        after: None,
    }
}

/// How many failed deletes of one member end the operation.
const MAX_DELETE_ATTEMPTS: u32 = 3;

/// Deletes every member, waiting for operations already acting on them.
pub struct DeleteMembers(pub Uuid);

#[async_trait]
impl Step<App> for DeleteMembers {
    fn name(&self) -> &'static str {
        "delete_members"
    }

    async fn action(&self, app: &App, s: &StepContext<'_>) -> Result<Value, StepError> {
        let group = match app.store().get_group_by_id(self.0).await {
            Ok(g) => g,
            Err(StoreError::NotFound { .. }) => return Ok(json!({ "deleted": 0 })),
            Err(e) => return Err(store_err(e)),
        };
        let caller = crate::app::groups::group_caller(&group);
        let mut attempts: HashMap<Uuid, u32> = HashMap::new();
        let mut deleted = 0usize;
        loop {
            let members = app.store().group_members(self.0).await.map_err(store_err)?;
            if members.is_empty() {
                break;
            }
            for m in &members {
                // An operation acts on it (a create still running, a delete under way).
                if m.operation_id.is_some() {
                    continue;
                }
                let n = attempts.entry(m.id).or_default();
                if *n >= MAX_DELETE_ATTEMPTS {
                    return Err(StepError::permanent(format!(
                        "instance {} could not be deleted ({}); delete it with `nimbus instance delete {}` and retry",
                        m.name,
                        m.reason.as_deref().unwrap_or("see its operations"),
                        m.name
                    )));
                }
                *n += 1;
                match app
                    .act_on_instance(&caller, &m.id.to_string(), OperationKind::InstanceDelete)
                    .await
                {
                    Ok(_) => deleted += 1,
                    // Busy (an operation began meanwhile) or already gone: looked at again.
                    Err(e) => {
                        tracing::debug!(instance_id = %m.id, error = %e.message, "member delete deferred")
                    }
                }
            }
            s.progress(&format!(
                "{} member(s) left, {deleted} delete(s) started",
                members.len()
            ))
            .await;
            s.sleep_or_cancel(Duration::from_millis(500)).await?;
        }
        Ok(json!({ "deleted": deleted }))
    }

    async fn undo(&self, app: &App, _s: &StepContext<'_>) -> Result<(), StepError> {
        match app.store().reactivate_group(self.0).await {
            Ok(()) | Err(StoreError::NotFound { .. }) => Ok(()),
            Err(e) => Err(store_err(e)),
        }
    }
}

/// Removes the group's record and events.
pub struct ForgetGroup(pub Uuid);

#[async_trait]
impl Step<App> for ForgetGroup {
    fn name(&self) -> &'static str {
        "forget_group"
    }

    async fn action(&self, app: &App, _s: &StepContext<'_>) -> Result<Value, StepError> {
        app.store()
            .delete_group_row(self.0)
            .await
            .map_err(|e| app_err(e.into()))?;
        Ok(json!({}))
    }

    fn is_point_of_no_return(&self, _output: &Value) -> bool {
        true
    }
}
