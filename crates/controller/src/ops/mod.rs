//! Durable operations of the controller, one file per operation, built from the shared steps
//! in [`steps`]. The engine (crate `nimbus-ops`) persists every step in the store, so an
//! operation interrupted by a controller's death is taken over by a live controller
//! ([`take_over`], run by `background::leases`), which resumes it from its log.

pub mod cold_migrate_steps;
pub mod drain_steps;
pub mod group_delete;
pub mod ha_from_snapshot;
pub mod ha_replica_choice;
pub mod host_drain;
pub mod instance_clone;
pub mod instance_cold_migrate;
pub mod instance_create;
pub mod instance_delete;
pub mod instance_ha_restart;
pub mod instance_migrate;
pub mod instance_reboot;
pub mod instance_start;
pub mod instance_stop;
pub mod migrate_steps;
mod shared_disk;
pub(crate) mod snapshot_copies;
pub mod snapshot_create;
pub mod snapshot_delete;
pub(crate) mod snapshot_move;
pub mod snapshot_restore;
pub mod snapshot_steps;
pub mod steps;

pub use snapshot_steps::SnapshotParams;

use crate::app::{App, AppError};
use nimbus_api::{InstanceState, OperationKind, OperationState};
use nimbus_ops::{LogError, Outcome, RetryPolicy, Step};
use nimbus_store::{OperationClaim, Scope};
use uuid::Uuid;

/// What an operation kind consists of: its steps and the instance states around it.
pub struct Plan {
    pub steps: Vec<Box<dyn Step<App>>>,
    /// State shown while the operation runs (`None`: the operation acts on no instance, or
    /// is a snapshot operation, which leaves the instance's state to its steps).
    pub during: Option<InstanceState>,
    /// State after success (`None`: the instance is gone, or there is none).
    pub after: Option<InstanceState>,
}

fn plan(kind: OperationKind, target: Uuid, target_name: &str) -> Plan {
    let instance = target;
    match kind {
        OperationKind::InstanceMigrate => instance_migrate::plan(instance),
        OperationKind::InstanceColdMigrate => instance_cold_migrate::plan(instance),
        OperationKind::HostDrain => host_drain::plan(target_name),
        OperationKind::GroupDelete => group_delete::plan(target),
        OperationKind::InstanceCreate => instance_create::plan(instance),
        OperationKind::InstanceStart => instance_start::plan(instance),
        OperationKind::InstanceStop => instance_stop::plan(instance),
        OperationKind::InstanceReboot => instance_reboot::plan(instance),
        OperationKind::InstanceDelete => instance_delete::plan(instance),
        OperationKind::InstanceClone => instance_clone::plan(instance),
        OperationKind::SnapshotCreate => snapshot_create::plan(instance),
        OperationKind::SnapshotRestore => snapshot_restore::plan(instance),
        OperationKind::SnapshotDelete => snapshot_delete::plan(instance),
        OperationKind::InstanceHaRestart => instance_ha_restart::plan(instance),
    }
}

/// Snapshot operations hold their instance (one operation at a time) without changing its
/// state: the VM runs on through a snapshot or a delete, a restore sets the state the host
/// reports, and a failure leaves the VM as it was.
fn is_snapshot_op(kind: OperationKind) -> bool {
    matches!(
        kind,
        OperationKind::SnapshotCreate
            | OperationKind::SnapshotRestore
            | OperationKind::SnapshotDelete
    )
}

/// Live and cold migrations keep a migration record, and leave the instance as its host
/// reports it when they fail.
fn is_migration(kind: OperationKind) -> bool {
    matches!(
        kind,
        OperationKind::InstanceMigrate | OperationKind::InstanceColdMigrate
    )
}

/// Claims operation `id` (new, owned by nobody) and runs it in the background; does nothing
/// when another controller claimed it first (that one runs it).
pub fn spawn(app: App, id: Uuid) {
    let app = app.unfenced();
    tokio::spawn(async move {
        let ttl = app.config().lease_ttl;
        match app
            .store()
            .claim_operation(id, app.controller_id(), ttl)
            .await
        {
            Ok(Some(claim)) => run_claimed(app, claim).await,
            Ok(None) => {
                tracing::debug!(operation_id = %id, "operation claimed by another controller")
            }
            Err(e) => {
                tracing::warn!(operation_id = %id, error = %e, "could not claim the operation; a controller's scan takes it over")
            }
        }
    });
}

/// Runs an operation this controller owns (claimed new, or taken over) in the background.
pub fn spawn_claimed(app: App, claim: OperationClaim) {
    tokio::spawn(run_claimed(app.unfenced(), claim));
}

/// Runs the operation until it ends or the lease is lost. A runner that fails otherwise (the
/// database unreachable) runs it again from its log a little later: this controller keeps
/// renewing the lease, so nobody else would.
async fn run_claimed(app: App, claim: OperationClaim) {
    let id = claim.operation;
    let retry = crate::background::leases::tick_of(app.config().lease_ttl);
    loop {
        match run_operation(&app, claim).await {
            Ok(()) => return,
            Err(RunError::LeaseLost) => {
                tracing::warn!(operation_id = %id, epoch = claim.epoch, "lease lost: another controller took the operation over; stopped here without undoing anything");
                return;
            }
            Err(RunError::App(e)) => {
                tracing::error!(operation_id = %id, error = %e, ?retry, "operation runner failed; resuming it from its log");
                tokio::time::sleep(retry).await;
            }
        }
    }
}

/// Why a runner stopped before the operation ended.
enum RunError {
    /// Another controller owns the operation now.
    LeaseLost,
    App(AppError),
}

impl From<AppError> for RunError {
    fn from(e: AppError) -> Self {
        RunError::App(e)
    }
}

impl From<LogError> for RunError {
    fn from(e: LogError) -> Self {
        match e {
            LogError::LeaseLost { .. } => RunError::LeaseLost,
            other => RunError::App(AppError::internal(other.to_string())),
        }
    }
}

async fn run_operation(app: &App, claim: OperationClaim) -> Result<(), RunError> {
    let id = claim.operation;
    let log = app.store().fenced_log(claim);
    let op = app
        .store()
        .get_operation(&Scope::All, id)
        .await
        .map_err(AppError::from)?;
    let instance = op.target_id;
    let plan = plan(op.kind, instance, &op.target_name);
    if op.state == OperationState::Running {
        if let Some(during) = plan.during {
            log.check_owned(id).await?;
            app.store()
                .set_instance_state(instance, during, None)
                .await
                .map_err(AppError::from)?;
        }
    }
    tracing::info!(operation_id = %id, epoch = claim.epoch, kind = op.kind.as_str(), "running operation");
    // The instance's new state is written before the operation shows as ended, so that a
    // client waiting for the operation sees its effect at once. Only by the owner: the lease
    // is checked (fenced) just before.
    let kind = op.kind;
    let after = plan.after;
    let instance_op = plan.during.is_some() || is_snapshot_op(kind);
    let fence = log.clone();
    let outcome = nimbus_ops::run_then(id, &plan.steps, app, &log, RetryPolicy::default(), |outcome| async move {
        if !instance_op {
            return;
        }
        if let Err(e) = fence.check_owned(id).await {
            tracing::warn!(operation_id = %id, error = %e, "not applying the end of the operation");
            return;
        }
        if let Err(e) = finish(app, id, instance, kind, &outcome, after).await {
            tracing::error!(operation_id = %id, error = %e, "could not apply the end of the operation; the reconciler retries it");
        }
    })
    .await;
    // Also when the run stopped short (its lease lost, the store failing): waiters re-read.
    app.operation_ended();
    let outcome = outcome?;
    tracing::info!(operation_id = %id, instance_id = %instance, kind = kind.as_str(), ?outcome, "operation ended");
    Ok(())
}

/// Applies the end of an operation to its instance. Idempotent.
async fn finish(
    app: &App,
    op: Uuid,
    instance: Uuid,
    kind: OperationKind,
    outcome: &Outcome,
    after: Option<InstanceState>,
) -> Result<(), AppError> {
    if is_migration(kind) {
        migrate_steps::end_record(app, op, outcome).await?;
    }
    if is_snapshot_op(kind) {
        snapshot_steps::settle(app, op, outcome).await?;
        app.store().end_instance_operation(instance, op).await?;
        return Ok(());
    }
    match (outcome, after) {
        (Outcome::Succeeded, None) => return Ok(()),
        // A failed migration leaves the VM where the host's agent says it runs.
        (Outcome::Failed { .. } | Outcome::Cancelled, _) if is_migration(kind) => {
            let state = steps::state_from_agent(app, instance).await;
            app.store()
                .set_instance_state(instance, state, None)
                .await?;
        }
        (Outcome::Succeeded, Some(state)) => {
            let note = ha_from_snapshot::success_note(app, op, kind).await;
            app.store()
                .set_instance_state(instance, state, note.as_deref())
                .await?;
        }
        (Outcome::Failed { error, .. }, _) => {
            let verb = kind.as_str().trim_start_matches("instance_");
            let reason = format!("{verb} failed: {error}");
            app.store()
                .set_instance_state(instance, InstanceState::Error, Some(&reason))
                .await?;
        }
        (Outcome::Cancelled, _) => {
            let state = if matches!(
                kind,
                OperationKind::InstanceCreate | OperationKind::InstanceClone
            ) {
                InstanceState::Error
            } else {
                steps::state_from_agent(app, instance).await
            };
            app.store()
                .set_instance_state(instance, state, Some("operation cancelled"))
                .await?;
        }
    }
    app.store().end_instance_operation(instance, op).await?;
    Ok(())
}

/// Takes over the operations no live controller owns (new ones never claimed, those of a
/// controller that died or stopped renewing), and runs them; called at start and on every
/// tick of the lease keeper. Answers how many it took.
pub async fn take_over(app: &App) -> Result<usize, AppError> {
    let claims = app
        .store()
        .take_over_operations(app.controller_id(), app.config().lease_ttl, TAKEOVER_BATCH)
        .await?;
    for claim in &claims {
        tracing::info!(operation_id = %claim.operation, epoch = claim.epoch, "took the operation over; resuming it");
        spawn_claimed(app.clone(), *claim);
    }
    Ok(claims.len())
}

/// Operations taken over per scan (the next scan takes more).
const TAKEOVER_BATCH: u32 = 32;

/// Applies the end of every ended operation still attached to its instance: its finish
/// failed (e.g. the database was briefly unreachable) or the controller stopped between the
/// two. Run at start and by the reconciler on every pass, so that no instance stays busy
/// forever. (An operation is marked ended only after its finish ran, so one attached to an
/// ended operation is never one whose finish is still to come.)
pub async fn settle_ended(app: &App) -> Result<(), AppError> {
    for inst in app.store().list_instances(&Scope::All).await? {
        let Some(op_id) = inst.operation_id else {
            continue;
        };
        let op = app.store().get_operation(&Scope::All, op_id).await?;
        if !op.state.is_final() {
            continue;
        }
        let outcome = match op.state {
            OperationState::Succeeded => Outcome::Succeeded,
            OperationState::Cancelled => Outcome::Cancelled,
            _ => Outcome::Failed {
                error: op.error.unwrap_or_default(),
                unwound: false,
            },
        };
        let after = plan(op.kind, inst.id, &inst.name).after;
        tracing::warn!(operation_id = %op_id, instance_id = %inst.id, "applying the end of an ended operation to its instance");
        if let Err(e) = finish(app, op_id, inst.id, op.kind, &outcome, after).await {
            tracing::error!(operation_id = %op_id, instance_id = %inst.id, error = %e, "could not apply the end of the operation; retried at the next pass");
        }
    }
    Ok(())
}
