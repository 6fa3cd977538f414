//! What one step of an operation is.

use crate::OperationLog;
use async_trait::async_trait;
use serde_json::Value;
use std::time::Duration;
use uuid::Uuid;

/// How a step failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StepError {
    /// May succeed if tried again (an agent is unreachable, a row is locked).
    #[error("{0}")]
    Transient(String),
    /// Will not succeed by retrying; the operation unwinds.
    #[error("{0}")]
    Permanent(String),
    /// The user cancelled the operation while the step ran.
    #[error("cancelled")]
    Cancelled,
}

impl StepError {
    pub fn transient(msg: impl Into<String>) -> Self {
        StepError::Transient(msg.into())
    }

    pub fn permanent(msg: impl Into<String>) -> Self {
        StepError::Permanent(msg.into())
    }
}

/// What a step sees while it runs: the operation, the outputs of earlier steps, a way to
/// report progress and to notice a cancel.
pub struct StepContext<'a> {
    pub operation_id: Uuid,
    pub(crate) log: &'a dyn OperationLog,
    /// The plan's step names, in order (outputs are addressed by them).
    pub(crate) names: Vec<&'static str>,
    pub(crate) outputs: Vec<Option<Value>>,
}

impl StepContext<'_> {
    /// Output logged by an earlier step, by the step's name.
    pub fn output(&self, step: &str) -> Option<&Value> {
        let i = self.names.iter().position(|n| *n == step)?;
        self.outputs.get(i).and_then(|o| o.as_ref())
    }

    /// The epoch of this runner's ownership of the operation, if the log is fenced.
    pub fn epoch(&self) -> Option<u64> {
        self.log.epoch()
    }

    /// Records a progress line shown to the user (best effort).
    pub async fn progress(&self, message: &str) {
        if let Err(e) = self.log.set_message(self.operation_id, message).await {
            tracing::warn!(operation_id = %self.operation_id, error = %e, "could not record progress");
        }
    }

    /// The user asked to cancel; long-running actions should poll this and return
    /// [`StepError::Cancelled`].
    pub async fn cancel_requested(&self) -> bool {
        self.log
            .cancel_requested(self.operation_id)
            .await
            .unwrap_or(false)
    }

    /// Sleeps, but returns early with `Err(Cancelled)` when a cancel arrives.
    pub async fn sleep_or_cancel(&self, d: Duration) -> Result<(), StepError> {
        if self.cancel_requested().await {
            return Err(StepError::Cancelled);
        }
        tokio::time::sleep(d).await;
        Ok(())
    }
}

/// One step of an operation over a context `C` (the controller's application state).
#[async_trait]
pub trait Step<C: Send + Sync>: Send + Sync {
    /// Stable name, recorded in the step log and shown to users.
    fn name(&self) -> &'static str;

    /// Does the step. Must be idempotent: it may run again after a crash.
    async fn action(&self, ctx: &C, step: &StepContext<'_>) -> Result<Value, StepError>;

    /// Reverts the step (also after a partial action). Must be idempotent. Default: nothing.
    async fn undo(&self, _ctx: &C, _step: &StepContext<'_>) -> Result<(), StepError> {
        Ok(())
    }

    /// Once this step is done with `output`, the operation can no longer be undone or
    /// cancelled. Most steps decide by their kind alone; a step may decide by what it did.
    fn is_point_of_no_return(&self, _output: &Value) -> bool {
        false
    }
}
