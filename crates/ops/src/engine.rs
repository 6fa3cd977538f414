//! Runs an operation's steps forward, and unwinds them on failure or cancel.

use crate::{LogError, LogSnapshot, OperationLog, Step, StepContext, StepError};
use nimbus_api::{OperationState, StepState};
use serde_json::Value;
use std::time::Duration;
use uuid::Uuid;

/// How transient step failures are retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts per action or undo, including the first.
    pub attempts: u32,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// About 45 s of retries: long enough to ride out an agent restart.
    fn default() -> Self {
        Self {
            attempts: 10,
            first_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(8),
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Succeeded,
    /// Failed; `unwound` says whether every done step was undone.
    Failed {
        error: String,
        unwound: bool,
    },
    Cancelled,
}

/// Runs (or resumes) operation `op` to a final state. Safe to call again after a crash at any
/// point: the log says where to continue.
pub async fn run<C: Send + Sync>(
    op: Uuid,
    steps: &[Box<dyn Step<C>>],
    ctx: &C,
    log: &dyn OperationLog,
    retry: RetryPolicy,
) -> Result<Outcome, LogError> {
    run_then(op, steps, ctx, log, retry, |_| async {}).await
}

/// Like [`run`], and calls `finalize` with the outcome *before* the final state is written,
/// so that whoever sees the operation ended also sees its effects (e.g. the instance's new
/// state). After a crash between the two, the resumed run calls `finalize` again: it must be
/// idempotent. Not called when the operation had already ended.
pub async fn run_then<C, F, Fut>(
    op: Uuid,
    steps: &[Box<dyn Step<C>>],
    ctx: &C,
    log: &dyn OperationLog,
    retry: RetryPolicy,
    finalize: F,
) -> Result<Outcome, LogError>
where
    C: Send + Sync,
    F: FnOnce(Outcome) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let (outcome, already_final) = drive(op, steps, ctx, log, retry).await?;
    if already_final {
        return Ok(outcome);
    }
    finalize(outcome.clone()).await;
    match &outcome {
        Outcome::Succeeded => log.set_state(op, OperationState::Succeeded, None).await?,
        Outcome::Cancelled => {
            log.set_state(op, OperationState::Cancelled, Some("cancelled"))
                .await?
        }
        Outcome::Failed { error, .. } => {
            log.set_state(op, OperationState::Failed, Some(error))
                .await?
        }
    }
    Ok(outcome)
}

/// Runs the steps (or the unwinding); returns the outcome and whether the operation had
/// already ended before this call. Writes every state but the final one.
async fn drive<C: Send + Sync>(
    op: Uuid,
    steps: &[Box<dyn Step<C>>],
    ctx: &C,
    log: &dyn OperationLog,
    retry: RetryPolicy,
) -> Result<(Outcome, bool), LogError> {
    let names: Vec<&'static str> = steps.iter().map(|s| s.name()).collect();
    log.init_steps(op, &names).await?;
    let snap = log.load(op).await?;
    match snap.state {
        OperationState::Succeeded => return Ok((Outcome::Succeeded, true)),
        OperationState::Cancelled => return Ok((Outcome::Cancelled, true)),
        OperationState::Failed => {
            let error = snap.error.unwrap_or_default();
            return Ok((
                Outcome::Failed {
                    error,
                    unwound: false,
                },
                true,
            ));
        }
        OperationState::Running | OperationState::Unwinding => {}
    }
    if let Some(error) = plan_mismatch(&snap, &names) {
        tracing::error!(operation_id = %op, %error, "operation refused: its plan is unknown here");
        return Ok((
            Outcome::Failed {
                error,
                unwound: false,
            },
            false,
        ));
    }
    if snap.state == OperationState::Unwinding {
        let cancelled = log.cancel_requested(op).await?;
        let error = snap.error.unwrap_or_else(|| "cancelled".into());
        let outcome = unwind(op, steps, ctx, log, retry, error, cancelled).await?;
        return Ok((outcome, false));
    }
    let mut outputs: Vec<Option<Value>> = snap.steps.iter().map(|s| s.output.clone()).collect();
    outputs.resize(steps.len(), None);
    let mut past_no_return = false;
    for (i, step) in steps.iter().enumerate() {
        let recorded = snap.steps.get(i).map(|s| s.state);
        if recorded == Some(StepState::Done) {
            let output = outputs[i].clone().unwrap_or(Value::Null);
            past_no_return |= step.is_point_of_no_return(&output);
            continue;
        }
        if !past_no_return && log.cancel_requested(op).await? {
            log.set_state(op, OperationState::Unwinding, Some("cancelled"))
                .await?;
            let outcome = unwind(op, steps, ctx, log, retry, "cancelled".into(), true).await?;
            return Ok((outcome, false));
        }
        log.set_step(op, i, StepState::Running, None, None).await?;
        let sctx = StepContext {
            operation_id: op,
            log,
            names: names.clone(),
            outputs: outputs.clone(),
        };
        let result = with_retries(retry, || step.action(ctx, &sctx)).await;
        match result {
            Ok(out) => {
                log.set_step(op, i, StepState::Done, Some(&out), None)
                    .await?;
                past_no_return |= step.is_point_of_no_return(&out);
                outputs[i] = Some(out);
            }
            Err(err) => {
                let cancelled = err == StepError::Cancelled && !past_no_return;
                let msg = if cancelled {
                    "cancelled".to_string()
                } else {
                    format!("{}: {err}", step.name())
                };
                log.set_step(op, i, StepState::Failed, None, Some(&err.to_string()))
                    .await?;
                if past_no_return {
                    tracing::error!(operation_id = %op, step = step.name(), error = %err,
                        "step failed after the point of no return");
                    let outcome = Outcome::Failed {
                        error: msg,
                        unwound: false,
                    };
                    return Ok((outcome, false));
                }
                tracing::warn!(operation_id = %op, step = step.name(), error = %err, "step failed; unwinding");
                log.set_state(op, OperationState::Unwinding, Some(&msg))
                    .await?;
                let outcome = unwind(op, steps, ctx, log, retry, msg, cancelled).await?;
                return Ok((outcome, false));
            }
        }
    }
    Ok((Outcome::Succeeded, false))
}

/// Undoes, in reverse order, every step that is done, failed or was in flight; the caller
/// writes the final state.
async fn unwind<C: Send + Sync>(
    op: Uuid,
    steps: &[Box<dyn Step<C>>],
    ctx: &C,
    log: &dyn OperationLog,
    retry: RetryPolicy,
    error: String,
    cancelled: bool,
) -> Result<Outcome, LogError> {
    let snap = log.load(op).await?;
    let outputs: Vec<Option<Value>> = snap.steps.iter().map(|s| s.output.clone()).collect();
    let sctx = StepContext {
        operation_id: op,
        log,
        names: steps.iter().map(|s| s.name()).collect(),
        outputs,
    };
    for (i, step) in steps.iter().enumerate().rev() {
        let state = snap.steps.get(i).map(|s| s.state);
        if !matches!(
            state,
            Some(StepState::Done | StepState::Failed | StepState::Running)
        ) {
            continue;
        }
        if let Err(err) = with_retries(retry, || step.undo(ctx, &sctx)).await {
            let msg = format!("{error}; undo of {} also failed: {err}", step.name());
            tracing::error!(operation_id = %op, step = step.name(), error = %err, "undo failed");
            return Ok(Outcome::Failed {
                error: msg,
                unwound: false,
            });
        }
        log.set_step(op, i, StepState::Undone, None, None).await?;
    }
    if cancelled {
        Ok(Outcome::Cancelled)
    } else {
        Ok(Outcome::Failed {
            error,
            unwound: true,
        })
    }
}

/// Why an operation recorded with other steps than `plan` (started by another nimbus version
/// whose plan for this kind differs) must not be resumed here; `None` when the recorded step
/// names are the plan's, in order. Steps are addressed by name: an operation persisted by an
/// older plan with the same steps resumes, a renamed, added, removed or moved step refuses
/// it, so that no step ever runs in another's place.
fn plan_mismatch(snap: &LogSnapshot, plan: &[&str]) -> Option<String> {
    let recorded: Vec<&str> = snap.steps.iter().map(|s| s.name.as_str()).collect();
    if recorded == plan {
        return None;
    }
    Some(format!(
        "this operation was started by a nimbus version whose plan has the steps [{}]; this \
         controller's plan has [{}]: it is not resumed here and no step was run (run the \
         version that started it to finish it, or retry the action)",
        recorded.join(", "),
        plan.join(", ")
    ))
}

async fn with_retries<F, Fut, T>(policy: RetryPolicy, mut f: F) -> Result<T, StepError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StepError>>,
{
    let mut backoff = policy.first_backoff;
    let mut attempt = 1;
    loop {
        match f().await {
            Err(StepError::Transient(msg)) if attempt < policy.attempts => {
                tracing::debug!(attempt, error = %msg, "transient step failure; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(policy.max_backoff);
                attempt += 1;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests;
