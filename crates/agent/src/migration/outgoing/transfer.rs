//! The inside of an outgoing migration task: setup, the disk mirror, following QEMU,
//! escalating, switching over, completing, and cleaning up after a failure or cancel.

use super::{Context, Outcome};
use crate::error::error_chain;
use crate::migration::disk_mirror::DiskMirror;
use crate::migration::policy::{self, Action, RoundSample};
use crate::migration::progress::{self, now_unix_ms, unix_ms, QemuStage};
use crate::migration::role::{self, MigrationRole};
use crate::migration::stall::StallWatch;
use crate::migration::tls;
use crate::migration::tunnel::OutgoingTunnel;
use crate::migration::MigrationError;
use nimbus_agent_api::{MigrationPhase, MigrationProgress};
use nimbus_qemu::qmp::{EventKind, MigrationInfo};
use nimbus_qemu::QmpEvent;
use std::time::Duration;
use tokio::sync::{broadcast, watch};
use tokio::time::{Instant, Interval};

/// How often QEMU's statistics are read.
const POLL: Duration = Duration::from_millis(150);
/// How long to wait for the MIGRATION `completed` event once `query-migrate` says completed
/// (its statistics may not be filled before).
const COMPLETION_EVENT_WAIT: Duration = Duration::from_secs(2);
/// How long a cancelled migration may take to stop.
const CANCEL_LIMIT: Duration = Duration::from_secs(10);
/// How long QEMU may take to answer an out-of-band `yank`.
const YANK_LIMIT: Duration = Duration::from_secs(2);

/// The state of one outgoing migration inside its task.
pub(super) struct Transfer {
    ctx: Context,
    cancel: watch::Receiver<bool>,
    events: broadcast::Receiver<QmpEvent>,
    rounds: Vec<RoundSample>,
    mirror: Option<DiskMirror>,
    completed_event: bool,
    continued: bool,
    /// Memory sent, watched for a stall (a cut link).
    memory_stall: StallWatch,
    /// Disk copied by the mirror before it is in sync, watched the same way.
    disk_stall: StallWatch,
    /// The agents' TLS tunnel QEMU sends through (a TLS target).
    tunnel: Option<OutgoingTunnel>,
}

impl Transfer {
    pub(super) fn new(ctx: Context, cancel: watch::Receiver<bool>) -> Self {
        let events = ctx.qmp.events();
        let bound = stall_bound(&ctx);
        Self {
            ctx,
            cancel,
            events,
            rounds: Vec::new(),
            mirror: None,
            completed_event: false,
            continued: false,
            memory_stall: StallWatch::new("memory sent", bound, Instant::now()),
            disk_stall: StallWatch::new("disk copied", bound, Instant::now()),
            tunnel: None,
        }
    }

    pub(super) async fn run(mut self, resume: bool) -> Outcome {
        let begun = if resume {
            self.resume().await
        } else {
            self.start().await
        };
        if let Err(e) = begun {
            return self.end_with(e).await;
        }
        match self.follow().await {
            Ok(()) => Outcome::Completed,
            Err(e) => self.end_with(e).await,
        }
    }

    /// Cleans up after a failure or a cancel and records the end.
    async fn end_with(&mut self, e: MigrationError) -> Outcome {
        if let MigrationError::Stalled(_) = e {
            self.yank().await;
        }
        self.abandon().await;
        if let MigrationError::Cancelled = e {
            tracing::info!("migration cancelled; the VM runs on here");
            self.publish(|p| p.phase = MigrationPhase::Cancelled);
            return Outcome::Cancelled;
        }
        let msg = error_chain(&e);
        tracing::warn!(error = msg, "migration failed; the VM runs on here");
        self.publish(|p| {
            p.phase = MigrationPhase::Failed;
            p.error = Some(msg.clone());
        });
        Outcome::Failed(msg)
    }

    async fn start(&mut self) -> Result<(), MigrationError> {
        let qmp = self.ctx.qmp.clone();
        let request = self.ctx.record.request.clone();
        let target_host = request.target_host.as_deref();
        self.ctx.tls.check_target(&request.target, target_host)?;
        // The tunnel's TLS connections open while QEMU is set up (see tunnel/outgoing.rs).
        self.open_stream()?;
        let caps = policy::source_capabilities(&request.policy, request.target.nbd.is_some());
        qmp.migrate_set_capabilities(&caps)
            .await
            .map_err(MigrationError::qmp("migrate-set-capabilities"))?;
        // The memory goes in clear to the agents' tunnel (tunnel.rs), never QEMU's TLS.
        let params = tls::client_parameters(policy::source_parameters(&request.policy));
        qmp.migrate_set_parameters(&params)
            .await
            .map_err(MigrationError::qmp("migrate-set-parameters"))?;
        if let Some(nbd) = &request.target.nbd {
            self.publish(|p| p.phase = MigrationPhase::MirroringDisk);
            tracing::info!(
                host = nbd.host,
                port = nbd.port,
                "mirroring the disk to the target"
            );
            let route =
                self.ctx
                    .tls
                    .outgoing_disk(&self.ctx.dir, &request.target, nbd, target_host)?;
            self.mirror = Some(DiskMirror::start(&qmp, self.ctx.id, route).await?);
            self.wait_mirror_ready().await?;
        }
        self.migrate().await
    }

    /// The URI QEMU migrates to; opens the agents' tunnel to a TLS target if not yet open.
    fn open_stream(&mut self) -> Result<String, MigrationError> {
        if self.tunnel.is_some() {
            return Ok(OutgoingTunnel::qemu_uri());
        }
        let request = &self.ctx.record.request;
        // QEMU's main channel and its multifd channels.
        let channels = 1 + usize::from(request.policy.multifd_channels.unwrap_or(0));
        let (uri, tunnel) = self.ctx.tls.outgoing_stream(
            &self.ctx.dir,
            &request.target,
            request.target_host.as_deref(),
            channels,
        )?;
        self.tunnel = tunnel;
        Ok(uri)
    }

    async fn migrate(&mut self) -> Result<(), MigrationError> {
        let uri = self.open_stream()?;
        let request = &self.ctx.record.request;
        tracing::info!(uri, target = request.target.migration_uri, "sending memory");
        self.memory_stall.restart(Instant::now());
        self.publish(|p| p.phase = MigrationPhase::PreCopy);
        self.ctx
            .qmp
            .migrate(&uri)
            .await
            .map_err(MigrationError::qmp("migrate"))
    }

    /// After an agent restart: takes the migration over from where QEMU is.
    async fn resume(&mut self) -> Result<(), MigrationError> {
        let info = self.query().await?;
        if self.ctx.record.request.target.nbd.is_some() {
            self.mirror = Some(DiskMirror::adopt(&self.ctx.qmp, self.ctx.id));
        }
        tracing::info!(status = info.status, "following a migration in flight");
        // `device` and `completed` come after migrate-continue: the switch-over has begun.
        self.continued = matches!(info.status.as_deref(), Some("device" | "completed"));
        match QemuStage::of(info.status.as_deref()) {
            QemuStage::NotStarted => {
                // Stopped before `migrate`: reuse a mirror still running, else start over.
                let mirroring = match &self.mirror {
                    Some(m) => m.job().await?.is_some(),
                    None => false,
                };
                if mirroring {
                    self.wait_mirror_ready().await?;
                    return self.migrate().await;
                }
                if let Some(m) = self.mirror.take() {
                    m.abort().await;
                }
                self.start().await
            }
            QemuStage::Failed => Err(MigrationError::Qemu(
                info.error_desc.unwrap_or_else(|| "no reason given".into()),
            )),
            QemuStage::Cancelled => Err(MigrationError::Qemu(
                "cancelled while the agent was away".into(),
            )),
            _ => Ok(()),
        }
    }

    async fn wait_mirror_ready(&mut self) -> Result<(), MigrationError> {
        let mut tick = tokio::time::interval(POLL);
        self.disk_stall.restart(Instant::now());
        loop {
            self.wait(&mut tick).await?;
            let job = match &self.mirror {
                Some(m) => m.job().await?,
                None => return Ok(()),
            };
            let Some(job) = job else {
                return Err(MigrationError::Mirror(
                    "the job ended before the disk was in sync".into(),
                ));
            };
            self.publish(|p| p.disk_remaining_bytes = job.remaining());
            if let Some(io) = job.io_status.as_deref().filter(|s| *s != "ok") {
                return Err(MigrationError::Mirror(format!("I/O status {io}")));
            }
            if job.ready {
                tracing::info!(bytes = job.len, "disk mirror in sync");
                return Ok(());
            }
            self.disk_stall.observe(job.offset, Instant::now())?;
            self.check_timeout()?;
        }
    }

    /// Polls QEMU until the migration ends.
    async fn follow(&mut self) -> Result<(), MigrationError> {
        let mut tick = tokio::time::interval(POLL);
        loop {
            self.wait(&mut tick).await?;
            let info = self.query_within_stall_bound().await?;
            match QemuStage::of(info.status.as_deref()) {
                QemuStage::NotStarted | QemuStage::PreCopy => {
                    self.update(&info, MigrationPhase::PreCopy);
                    self.check_stall(&info)?;
                    self.escalate(&info).await?;
                }
                QemuStage::PreSwitchover => {
                    self.update(&info, MigrationPhase::PreCopy);
                    self.switch_over().await?;
                    // The pause for the mirror's last pass was ours, not a stall.
                    self.memory_stall.restart(Instant::now());
                }
                QemuStage::PostCopy => self.update(&info, MigrationPhase::PostCopy),
                QemuStage::Completed => return self.complete().await,
                QemuStage::Failed => {
                    return Err(MigrationError::Qemu(
                        info.error_desc.unwrap_or_else(|| "no reason given".into()),
                    ))
                }
                QemuStage::Cancelled => {
                    return Err(MigrationError::Qemu(
                        "the migration was cancelled in QEMU".into(),
                    ))
                }
            }
        }
    }

    /// Waits for the next tick, or an event worth a poll now; fails on a cancel request.
    async fn wait(&mut self, tick: &mut Interval) -> Result<(), MigrationError> {
        loop {
            tokio::select! {
                biased;
                changed = self.cancel.changed() => {
                    if changed.is_ok() && !*self.cancel.borrow() {
                        continue;
                    }
                    if self.ctx.record.ladder.postcopy {
                        tracing::warn!("post-copy cannot be cancelled: the guest runs on the target");
                        continue;
                    }
                    if self.continued {
                        // Past switch-over the target may already run the guest: cancelling
                        // QEMU now could leave both copies stopped. Finish; the controller
                        // undoes a completed migration target first (see Transfer::undo).
                        tracing::info!("cancel deferred: the switch-over has begun");
                        continue;
                    }
                    return Err(MigrationError::Cancelled);
                }
                ev = self.events.recv() => match ev {
                    Ok(ev) => {
                        if self.note(&ev) {
                            return Ok(());
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => return Ok(()),
                    Err(broadcast::error::RecvError::Closed) => {
                        // QMP is gone: the next command says so.
                        tick.tick().await;
                        return Ok(());
                    }
                },
                _ = tick.tick() => return Ok(()),
            }
        }
    }

    /// Records what an event tells; true when QEMU's state should be read now.
    fn note(&mut self, ev: &QmpEvent) -> bool {
        match &ev.kind {
            EventKind::Stop => {
                let ms = unix_ms(ev.timestamp);
                tracing::info!(unix_ms = ms, "guest stopped for switch-over");
                self.publish(|p| p.stopped_unix_ms = ms);
                self.switching_over();
                false
            }
            EventKind::Migration { status } => {
                tracing::debug!(status, "MIGRATION event");
                self.completed_event |= status == "completed";
                true
            }
            EventKind::Other { name, .. } => name.starts_with("BLOCK_JOB_"),
            _ => false,
        }
    }

    /// `query-migrate`, given up after the stall bound: QEMU's monitor stops answering when
    /// the migration thread, holding QEMU's big lock at switch-over, is blocked sending on a
    /// dead link; that is a stall too.
    async fn query_within_stall_bound(&mut self) -> Result<MigrationInfo, MigrationError> {
        let bound = stall_bound(&self.ctx);
        match tokio::time::timeout(bound, self.query()).await {
            Ok(info) => info,
            Err(_) => {
                // Nothing was seen for the whole bound: this is a stall by definition.
                let stalled = self
                    .memory_stall
                    .observe(0, Instant::now())
                    .err()
                    .map_or_else(
                        || MigrationError::Timeout("QEMU's monitor stopped answering".into()),
                        MigrationError::from,
                    );
                self.publish(|p| p.escalations.push(stalled.to_string()));
                Err(stalled)
            }
        }
    }

    /// Shuts down the migration's connections out of band (QMP `yank`), so that QEMU,
    /// possibly blocked sending on a dead link, fails the transfer at once and can be
    /// cancelled and resumed.
    async fn yank(&self) {
        let mut instances = vec![serde_json::json!({"type": "migration"})];
        if self.ctx.record.request.target.nbd.is_some() {
            instances.push(serde_json::json!({
                "type": "block-node",
                "node-name": crate::migration::disk_mirror::NBD_NODE,
            }));
        }
        for instance in instances {
            match self.ctx.qmp.yank(instance.clone(), YANK_LIMIT).await {
                Ok(()) => tracing::info!(%instance, "stalled connections yanked"),
                Err(e) => tracing::debug!(%instance, error = %e, "nothing to yank"),
            }
        }
    }

    async fn query(&self) -> Result<MigrationInfo, MigrationError> {
        self.ctx
            .qmp
            .query_migrate()
            .await
            .map_err(MigrationError::qmp("query-migrate"))
    }

    fn update(&mut self, info: &MigrationInfo, phase: MigrationPhase) {
        self.publish(|p| {
            progress::apply(p, info);
            p.phase = phase;
        });
    }

    fn elapsed_ms(&self) -> u64 {
        now_unix_ms().saturating_sub(self.ctx.record.started_unix_ms)
    }

    /// Gives up when no memory was sent for the stall bound (post-copy excepted: the guest
    /// already runs on the target and cannot come back).
    fn check_stall(&mut self, info: &MigrationInfo) -> Result<(), MigrationError> {
        if self.ctx.record.ladder.postcopy {
            return Ok(());
        }
        let sent = info.ram.as_ref().map_or(0, |r| r.transferred);
        if let Err(stalled) = self.memory_stall.observe(sent, Instant::now()) {
            self.publish(|p| p.escalations.push(stalled.to_string()));
            return Err(stalled.into());
        }
        Ok(())
    }

    fn check_timeout(&mut self) -> Result<(), MigrationError> {
        let policy = &self.ctx.record.request.policy;
        match policy::decide(policy, &self.ctx.record.ladder, &[], self.elapsed_ms()) {
            Some(e) if e.action == Action::Abort => {
                self.publish(|p| p.escalations.push(e.message.clone()));
                Err(MigrationError::Timeout(e.message))
            }
            _ => Ok(()),
        }
    }

    /// Applies the convergence policy to the latest round.
    async fn escalate(&mut self, info: &MigrationInfo) -> Result<(), MigrationError> {
        if let Some(sample) = progress::sample(info) {
            if self.rounds.last().is_none_or(|r| r.round != sample.round) {
                self.rounds.push(sample);
            }
        }
        let record = &self.ctx.record;
        let Some(esc) = policy::decide(
            &record.request.policy,
            &record.ladder,
            &self.rounds,
            self.elapsed_ms(),
        ) else {
            return Ok(());
        };
        tracing::info!(escalation = esc.message, "escalating");
        let qmp = &self.ctx.qmp;
        match esc.action {
            Action::RaiseThrottle { level } => qmp
                .migrate_set_parameters(&policy::throttle_parameters(level))
                .await
                .map_err(MigrationError::qmp("migrate-set-parameters (throttle)"))?,
            Action::StartPostcopy => qmp
                .migrate_start_postcopy()
                .await
                .map_err(MigrationError::qmp("migrate-start-postcopy"))?,
            Action::Abort => {
                self.publish(|p| p.escalations.push(esc.message.clone()));
                return Err(MigrationError::Timeout(esc.message));
            }
        }
        let round = self.rounds.last().map_or(0, |r| r.round);
        self.ctx.record.ladder = policy::climb(&self.ctx.record.ladder, esc.action, round);
        self.publish(|p| p.escalations.push(esc.message));
        Ok(())
    }

    /// The guest is stopped before switch-over: complete the mirror, then let QEMU send
    /// the rest.
    async fn switch_over(&mut self) -> Result<(), MigrationError> {
        if self.continued {
            return Ok(());
        }
        self.switching_over();
        if let Some(mirror) = self.mirror.take() {
            let t0 = Instant::now();
            mirror.complete(stall_bound(&self.ctx)).await?;
            tracing::info!(took = ?t0.elapsed(), "disk mirror completed");
            self.publish(|p| p.disk_remaining_bytes = 0);
        }
        self.ctx
            .qmp
            .migrate_continue("pre-switchover")
            .await
            .map_err(MigrationError::qmp("migrate-continue"))?;
        self.continued = true;
        Ok(())
    }

    /// The guest stopped for the switch-over (its STOP event, or QEMU's pre-switchover
    /// state seen first): tells the VM's network once.
    fn switching_over(&mut self) {
        if let Some(switching_over) = self.ctx.on_switch_over.take() {
            switching_over();
        }
    }

    /// QEMU says completed: wait for its event so the statistics are final, record them.
    async fn complete(&mut self) -> Result<(), MigrationError> {
        let deadline = Instant::now() + COMPLETION_EVENT_WAIT;
        while !self.completed_event {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Ok(ev)) => {
                    self.note(&ev);
                }
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
                Ok(Err(broadcast::error::RecvError::Closed)) | Err(_) => break,
            }
        }
        if let Some(tunnel) = self.tunnel.take() {
            // What QEMU wrote is in the tunnel or the kernel, as it would be in a TCP
            // socket: it drains on its own (bounded) while the controller checks the target.
            tokio::spawn(tunnel.finish(stall_bound(&self.ctx)));
        }
        let info = self.query().await?;
        if let Some(mirror) = self.mirror.take() {
            // Only a migration resumed after a restart can get here with a mirror.
            tracing::warn!("completed with the disk mirror still attached; removing it");
            mirror.abort().await;
        }
        let last_beat = self.ctx.last_beat.last_unix_ms();
        self.publish(|p| {
            progress::apply(p, &info);
            p.phase = MigrationPhase::Completed;
            p.last_heartbeat_unix_ms = last_beat;
        });
        let p = self.ctx.progress.borrow().clone();
        tracing::info!(
            rounds = p.round,
            transferred = p.transferred_bytes,
            elapsed_ms = p.elapsed_ms,
            qemu_downtime_ms = info.downtime,
            "migration completed"
        );
        Ok(())
    }

    /// After a failure or cancel: stop QEMU's migration, drop the mirror, make sure the
    /// guest runs. Best effort, bounded.
    async fn abandon(&mut self) {
        let qmp = self.ctx.qmp.clone();
        let active = |info: &MigrationInfo| {
            let stage = QemuStage::of(info.status.as_deref());
            stage.is_active() && stage != QemuStage::PostCopy
        };
        if qmp.query_migrate().await.is_ok_and(|i| active(&i)) {
            if let Err(e) = qmp.migrate_cancel().await {
                tracing::warn!(error = %e, "migrate_cancel failed");
            }
            let deadline = Instant::now() + CANCEL_LIMIT;
            while qmp.query_migrate().await.is_ok_and(|i| active(&i)) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        // Closes every connection to the target.
        self.tunnel = None;
        let mirror = self.mirror.take().or_else(|| {
            self.ctx
                .record
                .request
                .target
                .nbd
                .as_ref()
                .map(|_| DiskMirror::adopt(&qmp, self.ctx.id))
        });
        if let Some(mirror) = mirror {
            mirror.abort().await;
        }
        if self.ctx.record.ladder.postcopy {
            // The guest ran on the target: this copy's memory is stale, never resume it.
            tracing::error!("post-copy failed: the VM is lost unless the target recovers");
            return;
        }
        match qmp.query_status().await {
            Ok(s) if s.status == "paused" => {
                tracing::info!("resuming the guest left paused");
                if let Err(e) = qmp.cont().await {
                    tracing::error!(error = %e, "cannot resume the guest");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read the VM's status"),
        }
    }

    /// Changes the published progress (with the live figures) and persists it when the
    /// phase or the escalations changed.
    fn publish(&mut self, change: impl FnOnce(&mut MigrationProgress)) {
        let elapsed = self.elapsed_ms();
        let beat = self.ctx.last_beat.last_unix_ms();
        let mut persist = false;
        self.ctx.progress.send_modify(|p| {
            let before = (p.phase, p.escalations.len(), p.stopped_unix_ms);
            change(p);
            if !p.phase.is_final() {
                p.last_heartbeat_unix_ms = beat;
            }
            p.elapsed_ms = elapsed;
            persist = before != (p.phase, p.escalations.len(), p.stopped_unix_ms);
        });
        if persist {
            self.ctx.record.progress = self.ctx.progress.borrow().clone();
            let role = MigrationRole::Outgoing(self.ctx.record.clone());
            if let Err(e) = role::write(&self.ctx.dir, &role) {
                tracing::warn!(error = %e.chain(), "cannot persist the migration");
            }
        }
    }
}

/// The policy's stall bound.
fn stall_bound(ctx: &Context) -> Duration {
    Duration::from_secs(ctx.record.request.policy.stall_timeout_secs)
}
