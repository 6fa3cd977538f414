//! The steps of a live migration and of a host drain.

use super::shared_disk::{has_dots, is_own_shared_disk};
use super::snapshot_copies::joined;
use super::snapshot_move::{beside_transfer, ensure_copied, switched_over_on_shared, SnapshotMove};
use super::steps::{agent_err, app_err, instance, op_params, store_err};
use crate::app::migrations::{migration_target, DEFAULT_MAX_DOWNTIME_MS};
use crate::app::App;
use async_trait::async_trait;
use chrono::Utc;
use nimbus_agent_api::{
    DiskTransfer, IncomingReady, IncomingRequest, MigrateRequest, MigrationCredential,
    MigrationPhase, MigrationPolicy, MigrationProgress, SnapshotSetPart, VmRunState, VmStatus,
};
use nimbus_api::{MigrateInstance, MigrationStats};
use nimbus_ops::{Outcome, Step, StepContext, StepError};
use nimbus_store::{NewMigration, Scope};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// How long the target may take to show a healthy guest after switch-over.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(60);
/// A heartbeat older than this means the guest is not running.
const HEARTBEAT_FRESH_MS: u64 = 2_000;
/// How long a guest without a heartbeat must keep running on the target to count as moved.
const HEARTBEATLESS_HOLD: Duration = Duration::from_secs(1);

pub(super) fn from_output<T: serde::de::DeserializeOwned>(
    s: &StepContext<'_>,
    step: &str,
    key: &str,
) -> Result<T, StepError> {
    let v = s
        .output(step)
        .and_then(|o| o.get(key))
        .cloned()
        .ok_or_else(|| StepError::permanent(format!("missing output {key:?} of step {step}")))?;
    serde_json::from_value(v).map_err(|e| StepError::permanent(format!("bad output {key:?}: {e}")))
}

pub(super) struct Route {
    pub source: String,
    pub target: String,
    /// How the disk moves (`shared`, `mirror`, or `copy` for a cold migration), as the
    /// prepare step recorded it; `None` when it recorded nothing (it failed, or its answer
    /// was lost): then nobody knows whether the target made a disk of its own.
    pub disk_transfer: Option<String>,
}

impl Route {
    pub fn shared(&self) -> bool {
        self.disk_transfer.as_deref() == Some("shared")
    }

    /// Whether the target's disk is one the target made (a mirror's or a copy's fresh
    /// disk): only then may an undo delete it. A shared disk is the source's; an unknown
    /// one may be.
    pub fn target_made_disk(&self) -> bool {
        matches!(self.disk_transfer.as_deref(), Some("mirror" | "copy"))
    }
}

pub(super) fn route(s: &StepContext<'_>) -> Result<Route, StepError> {
    Ok(Route {
        source: from_output(s, "choose_target", "source")?,
        target: from_output(s, "choose_target", "target")?,
        // The prepare step of a live migration, or of a cold one.
        disk_transfer: s
            .output("prepare_target")
            .or_else(|| s.output("prepare_cold_target"))
            .and_then(|o| o.get("disk_transfer"))
            .and_then(|v| v.as_str())
            .map(str::to_string),
    })
}

async fn params(app: &App, op: Uuid) -> Result<MigrateInstance, StepError> {
    op_params(app, op).await
}

/// Parallel memory streams (multifd) of a migration without post-copy: measured 1.1-1.7x
/// faster than one stream at every dirty rate (bench/migration.py). QEMU 10 cannot combine
/// multifd with post-copy, so a migration that may switch to post-copy uses one stream.
const MULTIFD_CHANNELS: u8 = 2;

/// The convergence policy nimbus gives both ends (see docs/live_migration.md).
fn policy(req: &MigrateInstance) -> MigrationPolicy {
    let allow_postcopy = req.allow_postcopy.unwrap_or(false);
    MigrationPolicy {
        max_downtime_ms: req.max_downtime_ms.unwrap_or(DEFAULT_MAX_DOWNTIME_MS),
        allow_postcopy,
        multifd_channels: (!allow_postcopy).then_some(MULTIFD_CHANNELS),
        ..MigrationPolicy::default()
    }
}

/// The certificate of `host`'s QEMU for this migration (see docs/security.md).
fn migration_credential(
    app: &App,
    host: &str,
    policy: &MigrationPolicy,
) -> Result<MigrationCredential, StepError> {
    app.tls()
        .migration_credential(host, policy.timeout_secs)
        .map_err(|e| StepError::permanent(format!("cannot issue the migration's certificate: {e}")))
}

/// Reserves room on the target (the scheduler's choice, or the requested host).
pub struct ChooseTarget(pub Uuid);

#[async_trait]
impl Step<App> for ChooseTarget {
    fn name(&self) -> &'static str {
        "choose_target"
    }

    async fn action(&self, app: &App, s: &StepContext<'_>) -> Result<Value, StepError> {
        if let Ok(m) = app.store().get_migration(&Scope::All, s.operation_id).await {
            return Ok(json!({ "source": m.source, "target": m.target }));
        }
        let req = params(app, s.operation_id).await?;
        let inst = instance(app, self.0).await?;
        let source = inst
            .host
            .clone()
            .ok_or_else(|| StepError::permanent("the instance has no host"))?;
        let unfit = app
            .unfit_targets(&inst, Some(&source))
            .await
            .map_err(|e| StepError::permanent(e.message))?;
        let (to, op) = (req.to.as_deref(), s.operation_id);
        let max_downtime_ms = req.max_downtime_ms.unwrap_or(DEFAULT_MAX_DOWNTIME_MS);
        let target = app
            .choose_and_claim(
                &inst,
                |pool, group| migration_target(pool, group, app, &inst, (&source, to), &unfit),
                |claim| {
                    let m = NewMigration {
                        id: op,
                        instance_id: self.0,
                        project: inst.project.clone(),
                        source: source.clone(),
                        target: claim.host.clone(),
                        vcpus: inst.vcpus,
                        memory_mib: inst.memory_mib,
                        disk_gib: inst.disk_gib,
                        max_downtime_ms,
                    };
                    async move { app.store().claim_migration(&m, &claim).await }
                },
            )
            .await
            .map_err(|e| StepError::permanent(e.message))?;
        tracing::info!(instance_id = %self.0, %source, %target, "migration target reserved");
        Ok(json!({ "source": source, "target": target }))
    }

    async fn undo(&self, app: &App, s: &StepContext<'_>) -> Result<(), StepError> {
        match app.store().get_migration(&Scope::All, s.operation_id).await {
            Ok(m) if m.state == "running" => app
                .store()
                .end_migration(s.operation_id, "failed")
                .await
                .map_err(store_err),
            _ => Ok(()),
        }
    }
}

/// Starts the target QEMU waiting for the VM (with an NBD export when the disk is local).
pub struct PrepareTarget(pub Uuid);

#[async_trait]
impl Step<App> for PrepareTarget {
    fn name(&self) -> &'static str {
        "prepare_target"
    }

    async fn action(&self, app: &App, s: &StepContext<'_>) -> Result<Value, StepError> {
        s.progress("starting the target QEMU").await;
        let r = route(s)?;
        let inst = instance(app, self.0).await?;
        let spec = app.vm_spec(&inst).await.map_err(app_err)?;
        let mut set = SnapshotMove {
            instance: self.0,
            source: r.source.clone(),
            target: r.target.clone(),
            shared: false,
            live: true,
        };
        // What the snapshots are made of, asked beside how the disk moves (both of the
        // source), once for both parts.
        let asked = Instant::now();
        let ((disk, kind, dst_host), inventory) =
            tokio::try_join!(disk_transfer(app, self.0, &r), set.inventory(app))?;
        set.shared = kind == "shared";
        // The manifests and memory chunks (the bulk) from now on, in the background: beside
        // the layers, the target's start and the memory transfer, which waits for them.
        // Only the layers before the target QEMU starts: it opens its disk on them.
        set.start_memory(app, s.operation_id, inventory.clone());
        let snapshots = set
            .copy_of(app, Some(s), SnapshotSetPart::Disk, inventory, asked)
            .await?;
        let policy = policy(&params(app, s.operation_id).await?);
        let tls_credential = Some(migration_credential(app, &r.target, &policy)?);
        let ready = app
            .agent(&dst_host.agent_url)
            .migration_incoming(&IncomingRequest {
                spec,
                disk,
                policy,
                // Over TLS the target accepts only this host's certificate.
                source_host: Some(r.source.clone()),
                tls_credential,
                guest_ready: inst.ready.is_some(),
            })
            .await
            .map_err(agent_err)?;
        crate::failpoint::check("migrate.after_prepare_target")?;
        Ok(json!({ "ready": ready, "disk_transfer": kind, "snapshots": snapshots }))
    }

    /// Ends the snapshot copy in the background, then removes the target's copy; its disk
    /// only when the target provably made it.
    async fn undo(&self, app: &App, s: &StepContext<'_>) -> Result<(), StepError> {
        app.snapshot_copies().end(s.operation_id).await;
        let r = route(s)?;
        let keep_disk = !r.target_made_disk();
        if r.disk_transfer.is_none() {
            tracing::warn!(instance_id = %self.0, target = %r.target, "the target's disk transfer is unknown: its disk (if any) is kept");
        }
        let agent = app.agent_of(&r.target).await.map_err(app_err)?;
        let res = agent.remove_vm(self.0, keep_disk).await;
        res.map_err(agent_err)
    }
}

/// How the disk reaches the target: nothing to copy when both hosts see the same shared
/// storage and the disk lives there (one made before the host had shared storage is local:
/// it is copied). Returns the transfer, its name for the record, and the target host.
pub(super) async fn disk_transfer(
    app: &App,
    id: Uuid,
    r: &Route,
) -> Result<(DiskTransfer, &'static str, nimbus_store::HostRecord), StepError> {
    let (src_host, dst_host) = (
        app.store().get_host(&r.source).await.map_err(store_err)?,
        app.store().get_host(&r.target).await.map_err(store_err)?,
    );
    let source_vm = app
        .agent(&src_host.agent_url)
        .vm(id)
        .await
        .map_err(agent_err)?;
    let shared_dir = match (&src_host.shared_storage, &dst_host.shared_storage) {
        (Some(a), Some(b)) if a == b => Some(a.clone()),
        _ => None,
    };
    Ok(match (shared_dir, source_vm.disk_path) {
        (Some(dir), Some(path)) if is_own_shared_disk(&dir, id, &path) => {
            (DiskTransfer::Shared { path }, "shared", dst_host)
        }
        (Some(_), Some(path)) if has_dots(&path) => {
            return Err(StepError::permanent(format!(
                "host {} reports a disk path with `.` or `..` ({}); refusing to move the VM",
                r.source,
                path.display()
            )))
        }
        _ => (DiskTransfer::Mirror, "mirror", dst_host),
    })
}

/// Copies memory (and a local disk) while the VM runs, until the source pauses and the
/// target has everything; the snapshots' manifests and memory chunks go beside it (see
/// [`beside_transfer`]).
pub struct Transfer(pub Uuid);

fn progress_line(p: &MigrationProgress) -> String {
    let mib = |b: u64| b as f64 / 1048576.0;
    match p.phase {
        MigrationPhase::MirroringDisk => format!("mirroring disk: {:.0} MiB left", mib(p.disk_remaining_bytes)),
        _ => format!(
            "{:?} round {}: {:.0}/{:.0} MiB sent, {:.0} MiB left, dirty {:.1} MiB/s, expected downtime {}{}",
            p.phase,
            p.round,
            mib(p.transferred_bytes),
            mib(p.total_bytes),
            mib(p.remaining_bytes),
            mib(p.dirty_rate_bytes_per_s),
            p.expected_downtime_ms.map(|d| format!("{d} ms")).unwrap_or_else(|| "-".into()),
            if p.throttle_pct > 0 { format!(", throttle {}%", p.throttle_pct) } else { String::new() },
        )
        .to_lowercase(),
    }
}

#[async_trait]
impl Step<App> for Transfer {
    fn name(&self) -> &'static str {
        "transfer"
    }

    async fn action(&self, app: &App, s: &StepContext<'_>) -> Result<Value, StepError> {
        crate::failpoint::hold("migrate.transfer").await;
        let r = route(s)?;
        let ready: IncomingReady = from_output(s, "prepare_target", "ready")?;
        let req = params(app, s.operation_id).await?;
        let copy = || {
            let set = SnapshotMove::live(self.0, &r);
            async move { set.copy(app, Some(s), SnapshotSetPart::Memory).await }
        };
        // The copy the prepare step started (after a restart of this controller, a new one);
        // one that failed already fails the migration before it starts.
        let first: futures::future::BoxFuture<'_, Result<Value, StepError>> =
            match app.snapshot_copies().take(s.operation_id) {
                Some(started) if started.is_finished() => {
                    let copied = joined(started).await?;
                    Box::pin(async move { Ok(copied) })
                }
                Some(started) => Box::pin(joined(started)),
                None => Box::pin(copy()),
            };
        let source = app.agent_of(&r.source).await.map_err(app_err)?;
        let current = source.migration(self.0).await.map_err(agent_err)?;
        let ours = current.migration_id == Some(s.operation_id);
        if ours
            && matches!(
                current.phase,
                MigrationPhase::Failed | MigrationPhase::Cancelled
            )
        {
            // Resumed after a controller restart: this migration already ended on the source.
            return Err(StepError::permanent(format!(
                "the migration ended on the source: {}",
                current
                    .error
                    .unwrap_or_else(|| format!("{:?}", current.phase))
            )));
        }
        if !ours || !current.phase.is_final() {
            // New, or resumed by a controller that took the operation over: the source then
            // carries on with the migration in flight, and refuses the older owner from now.
            let policy = policy(&req);
            let tls_credential = Some(migration_credential(app, &r.source, &policy)?);
            let request = MigrateRequest {
                target: ready,
                tls_credential,
                policy,
                migration_id: Some(s.operation_id),
                owner_epoch: s.epoch(),
                // Over TLS the target's certificate must name it.
                target_host: Some(r.target.clone()),
            };
            source
                .migration_start(self.0, &request)
                .await
                .map_err(agent_err)?;
        }
        let cancel = || async {
            if let Err(e) = source.migration_cancel(self.0).await {
                tracing::warn!(instance_id = %self.0, error = %e, "cannot cancel the migration");
            }
        };
        let (mut out, snapshots) =
            beside_transfer(self.watch(app, s, &r), first, copy, cancel).await?;
        out["snapshots"] = snapshots;
        Ok(out)
    }

    /// Done with a shared disk, the switch-over cannot be undone: the target may have written
    /// to the disk already, so the source's older memory must never resume over it.
    fn is_point_of_no_return(&self, output: &Value) -> bool {
        switched_over_on_shared(output)
    }

    /// Resumes the VM on the source. The target copy goes first: while it holds the disk
    /// (shared storage keeps an image lock), the source could not resume. After a completed
    /// switch-over with a shared disk, the target may already have written to the disk, so
    /// resuming the older source memory over it could corrupt the guest's file systems:
    /// then the source stays paused and the instance shows `error` (see docs).
    async fn undo(&self, app: &App, s: &StepContext<'_>) -> Result<(), StepError> {
        let r = route(s)?;
        let source = app.agent_of(&r.source).await.map_err(app_err)?;
        let phase = source.migration(self.0).await.map(|p| p.phase);
        if r.shared() && matches!(phase, Ok(MigrationPhase::Completed)) {
            tracing::error!(instance_id = %self.0, "switch-over completed on shared storage but the target failed; not resuming the stale source copy");
            return Ok(());
        }
        PrepareTarget(self.0).undo(app, s).await?;
        match source.migration_cancel(self.0).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(agent_err(e)),
        }
    }
}

/// How long the source agent may hold a progress request until the migration ends: the
/// end is seen at once, and progress and cancel requests are looked at this often.
const PROGRESS_WAIT: Duration = Duration::from_millis(1000);

impl Transfer {
    /// Follows the migration on the source to its end (or cancels it when asked).
    async fn watch(&self, app: &App, s: &StepContext<'_>, r: &Route) -> Result<Value, StepError> {
        let source = app.agent_of(&r.source).await.map_err(app_err)?;
        let mut last_stats = Instant::now();
        loop {
            if s.cancel_requested().await {
                let p = source.migration_cancel(self.0).await.map_err(agent_err)?;
                if p.phase == MigrationPhase::Completed && r.shared() {
                    // Too late: the target runs the guest on the shared disk, and undoing
                    // would only stop it. The migration goes on (see is_point_of_no_return).
                    tracing::info!(instance_id = %self.0, "cancel came after the switch-over on shared storage; the migration goes on");
                    return Ok(json!({ "progress": p, "shared": true }));
                }
                return Err(StepError::Cancelled);
            }
            let asked = Instant::now();
            let p = match source.migration_when_final(self.0, PROGRESS_WAIT).await {
                Ok(p) => p,
                Err(e) if e.is_transient() => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                Err(e) => return Err(agent_err(e)),
            };
            s.progress(&progress_line(&p)).await;
            if last_stats.elapsed() > Duration::from_secs(1) || p.phase.is_final() {
                record_progress(app, s.operation_id, &p, r.shared()).await;
                last_stats = Instant::now();
            }
            match p.phase {
                MigrationPhase::Completed => {
                    return Ok(json!({ "progress": p, "shared": r.shared() }))
                }
                MigrationPhase::Failed => {
                    return Err(StepError::permanent(format!(
                        "the migration failed: {}",
                        p.error.unwrap_or_else(|| "no reason given".into())
                    )))
                }
                MigrationPhase::Cancelled => return Err(StepError::Cancelled),
                // An agent that did not hold the request (an older release) is not asked
                // again at once.
                _ if asked.elapsed() < PROGRESS_WAIT / 2 => {
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                _ => {}
            }
        }
    }
}

async fn record_progress(app: &App, op: Uuid, p: &MigrationProgress, shared: bool) {
    let Ok(mut m) = app.store().get_migration(&Scope::All, op).await else {
        return;
    };
    m.stats.disk_transfer = if shared { "shared" } else { "mirror" }.into();
    m.stats.rounds = p.round;
    m.stats.transferred_bytes = p.transferred_bytes;
    m.stats.total_bytes = p.total_bytes;
    m.stats.escalations = p.escalations.clone();
    m.stats.total_ms = (Utc::now() - m.created_at).num_milliseconds().max(0) as u64;
    let _ = app.store().set_migration_stats(op, &m.stats).await;
}

/// Waits until the guest runs on the target and its heartbeat continues there: a migration
/// is done only when the guest is seen healthy, never on QEMU's word alone. A guest that never
/// sent a heartbeat on the source (an uploaded image: its OS knows nothing of nimbus's
/// heartbeat port) can only be seen running: resumed on the target and still running
/// [`HEARTBEATLESS_HOLD`] later.
pub struct VerifyTarget(pub Uuid);

#[async_trait]
impl Step<App> for VerifyTarget {
    fn name(&self) -> &'static str {
        "verify_target"
    }

    async fn action(&self, app: &App, s: &StepContext<'_>) -> Result<Value, StepError> {
        s.progress("waiting for the guest's heartbeat on the target")
            .await;
        let r = route(s)?;
        let progress: MigrationProgress = from_output(s, "transfer", "progress")?;
        let target = app.agent_of(&r.target).await.map_err(app_err)?;
        let start = Instant::now();
        let heartbeatless = progress.last_heartbeat_unix_ms.is_none();
        let mut running_since: Option<Instant> = None;
        loop {
            match target.vm(self.0).await {
                Ok(st) if st.state == VmRunState::Crashed => {
                    return Err(StepError::permanent(format!(
                        "the VM failed on the target: {}",
                        st.reason.unwrap_or_default()
                    )))
                }
                Ok(st)
                    if moved(&st)
                        && (healthy(&st)
                            || heartbeatless
                                && running_since.get_or_insert_with(Instant::now).elapsed()
                                    >= HEARTBEATLESS_HOLD) =>
                {
                    let downtime = match (progress.stopped_unix_ms, st.resumed_unix_ms) {
                        (Some(stop), Some(resume)) => Some(resume.saturating_sub(stop)),
                        _ => None,
                    };
                    let pause = match (progress.last_heartbeat_unix_ms, st.first_heartbeat_unix_ms)
                    {
                        (Some(last), Some(first)) => Some(first.saturating_sub(last)),
                        _ => None,
                    };
                    return Ok(json!({ "downtime_ms": downtime, "guest_pause_ms": pause }));
                }
                Ok(st) if !moved(&st) => running_since = None,
                Ok(_) => {}
                Err(e) if e.is_transient() => {}
                Err(e) => return Err(agent_err(e)),
            }
            if start.elapsed() > VERIFY_TIMEOUT {
                return Err(StepError::permanent(format!(
                    "the guest showed no heartbeat on {} within {} s",
                    r.target,
                    VERIFY_TIMEOUT.as_secs()
                )));
            }
            s.sleep_or_cancel(Duration::from_millis(50)).await?;
        }
    }
}

/// Whether the guest runs on the target (resumed there after the switch-over).
fn moved(st: &VmStatus) -> bool {
    st.state == VmRunState::Running && !st.incoming
}

/// Whether the guest runs on the target with a fresh heartbeat.
fn healthy(st: &VmStatus) -> bool {
    st.first_heartbeat_unix_ms.is_some()
        && st.heartbeat_age_ms.is_some_and(|a| a < HEARTBEAT_FRESH_MS)
}

/// Moves the instance to the target in the store. The point of no return.
pub struct Commit(pub Uuid);

#[async_trait]
impl Step<App> for Commit {
    fn name(&self) -> &'static str {
        "commit"
    }

    async fn action(&self, app: &App, s: &StepContext<'_>) -> Result<Value, StepError> {
        let r = route(s)?;
        let progress: MigrationProgress = from_output(s, "transfer", "progress")?;
        let set = SnapshotMove::live(self.0, &r);
        let copied = s.output("transfer").and_then(|o| o.get("snapshots"));
        ensure_copied(&set, copied, app, s).await?;
        let verified = s.output("verify_target").cloned().unwrap_or_default();
        let stats = commit_move(app, s.operation_id, self.0, &r, |total_ms| MigrationStats {
            disk_transfer: if r.shared() { "shared" } else { "mirror" }.into(),
            rounds: progress.round,
            transferred_bytes: progress.transferred_bytes,
            total_bytes: progress.total_bytes,
            total_ms,
            downtime_ms: verified.get("downtime_ms").and_then(Value::as_u64),
            guest_pause_ms: verified.get("guest_pause_ms").and_then(Value::as_u64),
            escalations: progress.escalations.clone(),
        })
        .await?;
        tracing::info!(instance_id = %self.0, source = %r.source, target = %r.target, ?stats, "migration committed");
        Ok(json!({ "stats": stats }))
    }

    fn is_point_of_no_return(&self, _output: &Value) -> bool {
        true
    }
}

/// Moves `instance` to the target in the store and closes the migration record with the
/// stats `stats` makes of the total time (ms): the commit of a live or cold migration.
pub(super) async fn commit_move(
    app: &App,
    op: Uuid,
    instance: Uuid,
    r: &Route,
    stats: impl FnOnce(u64) -> MigrationStats,
) -> Result<MigrationStats, StepError> {
    app.store()
        .move_instance(instance, &r.source, &r.target)
        .await
        .map_err(store_err)?;
    app.store()
        .move_snapshots(instance, &r.target)
        .await
        .map_err(store_err)?;
    let m = app
        .store()
        .get_migration(&Scope::All, op)
        .await
        .map_err(store_err)?;
    let stats = stats((Utc::now() - m.created_at).num_milliseconds().max(0) as u64);
    app.store()
        .set_migration_stats(op, &stats)
        .await
        .map_err(store_err)?;
    app.store()
        .end_migration(op, "succeeded")
        .await
        .map_err(store_err)?;
    Ok(stats)
}

/// Deletes the paused source copy (keeping a shared disk, which the target now uses).
pub struct CleanupSource(pub Uuid);

#[async_trait]
impl Step<App> for CleanupSource {
    fn name(&self) -> &'static str {
        "cleanup_source"
    }

    async fn action(&self, app: &App, s: &StepContext<'_>) -> Result<Value, StepError> {
        let r = route(s)?;
        let agent = app.agent_of(&r.source).await.map_err(app_err)?;
        let res = agent.remove_vm(self.0, r.shared()).await;
        res.map_err(agent_err)?;
        Ok(json!({}))
    }
}

/// Closes the migration record when its operation ends (the commit closes it on success).
pub async fn end_record(
    app: &App,
    op: Uuid,
    outcome: &Outcome,
) -> Result<(), crate::app::AppError> {
    let state = match outcome {
        Outcome::Succeeded => return Ok(()),
        Outcome::Cancelled => "cancelled",
        Outcome::Failed { .. } => "failed",
    };
    match app.store().get_migration(&Scope::All, op).await {
        Ok(m) if m.state == "running" || (state == "cancelled" && m.state == "failed") => {
            app.store().end_migration(op, state).await?;
        }
        _ => {}
    }
    Ok(())
}
