//! The actor's side of live migration: its commands, the events that change the VM's
//! state, and the re-adoption of a VM found in a migration state. The work itself is in
//! [`crate::migration`].

use super::Actor;
use crate::error::{error_chain, Error, Result};
use crate::instance::Reply;
use crate::migration::endpoint::uri_address;
use crate::migration::incoming::{self, IncomingPlan};
use crate::migration::outgoing::{Context, Outcome, OutgoingTask};
use crate::migration::policy;
use crate::migration::progress::{now_unix_ms, unix_ms};
use crate::migration::receive_watch::{self, ReceiveWatch};
use crate::migration::role::{self, MigrationRole, OutgoingRecord};
use crate::migration::tls::MigrationTls;
use crate::migration::tunnel::IncomingTunnel;
use crate::network::{HostNetwork, NetError};
use nimbus_agent_api::VmSpec;
use nimbus_agent_api::{
    DiskTransfer, IncomingReady, MigrateRequest, MigrationCredential, MigrationPhase,
    MigrationProgress, VmRunState,
};
use nimbus_qemu::qmp::QmpTimestamp;
use nimbus_qemu::Qmp;
use std::sync::Arc;
use tokio::sync::watch;
use tracing::Instrument;

/// How long the tunnel of an arrived VM may stay open after the guest resumed here (a
/// post-copy's last pages).
const TUNNEL_DRAIN: std::time::Duration = std::time::Duration::from_secs(600);

/// The migration state the actor keeps.
pub(super) struct MigrationSlot {
    /// Read by the VM handle (`GET /vms/{id}/migration`).
    progress: Arc<watch::Sender<MigrationProgress>>,
    outgoing: Option<OutgoingTask>,
    /// Cancels waiting for the outgoing task to end.
    cancel_replies: Vec<Reply<MigrationProgress>>,
    /// The VM's part in its last migration, as persisted.
    role: Option<MigrationRole>,
    /// The newest owner seen of the current migration: (operation, epoch).
    newest_owner: Option<(uuid::Uuid, u64)>,
    /// How this host secures its migrations.
    tls: MigrationTls,
    /// Target: what arrives, while QEMU waits for the VM.
    receiving: Option<ReceiveWatch>,
    /// Target: the agents' TLS tunnels to the waiting QEMU (memory stream, disk mirror),
    /// until the guest runs here.
    tunnels: Vec<IncomingTunnel>,
    /// Orders the changes to the VM's floating IPs here: a hand-over at switch-over comes
    /// before the claim of a resume here that follows it (a switch-over that failed).
    network_turn: Arc<tokio::sync::Mutex<()>>,
}

impl MigrationSlot {
    pub(super) fn new(progress: Arc<watch::Sender<MigrationProgress>>, tls: MigrationTls) -> Self {
        Self {
            progress,
            tls,
            outgoing: None,
            cancel_replies: Vec::new(),
            role: None,
            newest_owner: None,
            receiving: None,
            tunnels: Vec::new(),
            network_turn: Arc::default(),
        }
    }
}

/// Waits for the end of the outgoing migration, forever if none runs.
pub(super) async fn outgoing_end(slot: &mut MigrationSlot) -> Outcome {
    match &mut slot.outgoing {
        Some(task) => task.finished().await,
        None => std::future::pending().await,
    }
}

impl Actor {
    fn set_role(&mut self, role: MigrationRole) {
        if let Err(e) = role::write(&self.dir, &role) {
            tracing::warn!(error = %e.chain(), "cannot persist the migration role");
        }
        self.migration.role = Some(role);
    }

    /// An outgoing migration runs.
    pub(super) fn migration_in_flight(&self) -> bool {
        self.migration.outgoing.is_some()
    }

    fn current_qmp(&self) -> Option<Qmp> {
        self.run.as_ref().and_then(|r| r.qmp.clone())
    }

    /// Target: launches QEMU waiting for the VM, opens its endpoints. Idempotent while
    /// QEMU waits.
    pub(super) async fn receive(&mut self, plan: IncomingPlan) -> Result<IncomingReady> {
        let Some(MigrationRole::Incoming(mut record)) = self.migration.role.clone() else {
            return Err(Error::Conflict(format!(
                "VM {} is not prepared for an incoming migration",
                self.id
            )));
        };
        if self.run.is_some() {
            return match (&record.ready, self.status.borrow().incoming) {
                (Some(ready), true) => Ok(ready.clone()),
                _ => Err(Error::Conflict(format!("VM {} already runs here", self.id))),
            };
        }
        // Its floating IPs are claimed here once it resumes here (incoming_done), not before:
        // until then only the source reaches it.
        self.network.expect_arrival(&self.spec).await;
        self.launch(true).await?;
        let qmp = self
            .qmp()
            .await
            .ok_or_else(|| Error::QemuFailed("QMP is unavailable".into()))?;
        let export = incoming::export_name(self.id);
        let tls = self
            .migration
            .tls
            .for_migration(plan.tls_credential.as_ref());
        let (ready, tunnels) = incoming::listen(&qmp, &self.dir, &plan, &export, &tls)
            .await
            .map_err(|e| Error::QemuFailed(error_chain(&e)))?;
        self.migration.tunnels = tunnels;
        tracing::info!(
            uri = ready.migration_uri,
            nbd = ?ready.nbd,
            "waiting for the incoming migration"
        );
        self.migration.receiving = Some(ReceiveWatch::new(
            &ready,
            &record.policy,
            tokio::time::Instant::now(),
        ));
        record.ready = Some(ready.clone());
        self.set_role(MigrationRole::Incoming(record));
        Ok(ready)
    }

    /// Source: starts sending the VM; answers with the first progress.
    pub(super) async fn migrate_start(
        &mut self,
        mut req: MigrateRequest,
    ) -> Result<MigrationProgress> {
        let current = self.migration.progress.borrow().clone();
        self.check_owner(&req)?;
        if self.migration.outgoing.is_some() {
            let same = matches!(&self.migration.role,
                Some(MigrationRole::Outgoing(r)) if r.request == req
                    || (r.request.migration_id.is_some()
                        && r.request.migration_id == req.migration_id));
            if same {
                // The same migration, asked again (a resumed step, or a controller that
                // took the operation over): it carries on.
                return Ok(current);
            }
            return Err(Error::Conflict(format!(
                "VM {} is already migrating ({:?})",
                self.id, current.phase
            )));
        }
        let (state, incoming) = {
            let s = self.status.borrow();
            (s.state, s.incoming)
        };
        if state != VmRunState::Running || incoming || self.run.is_none() || self.stop.is_some() {
            return Err(Error::Conflict(format!(
                "VM {} is {state:?}, not running: it cannot migrate",
                self.id
            )));
        }
        policy::validate(&req.policy).map_err(Error::BadRequest)?;
        let qmp = self
            .qmp()
            .await
            .ok_or_else(|| Error::QemuFailed("QMP is unavailable".into()))?;
        let mut progress = role::no_progress();
        progress.phase = MigrationPhase::Setup;
        progress.migration_id = req.migration_id;
        // The key of this migration lives in the task only: never in the persisted record.
        let credential = req.tls_credential.take();
        let record = OutgoingRecord {
            request: req,
            started_unix_ms: now_unix_ms(),
            ladder: policy::Ladder::default(),
            progress: progress.clone(),
        };
        tracing::info!(
            uri = record.request.target.migration_uri,
            mirror = record.request.target.nbd.is_some(),
            policy = ?record.request.policy,
            "migration starting"
        );
        self.set_role(MigrationRole::Outgoing(record.clone()));
        self.migration.progress.send_replace(progress.clone());
        self.spawn_outgoing(qmp, record, false, credential);
        Ok(progress)
    }

    /// Refuses a request from a stale owner of the migration: one whose epoch is older than
    /// one already seen for the same operation (another controller took it over since).
    fn check_owner(&mut self, req: &MigrateRequest) -> Result<()> {
        let (Some(op), Some(epoch)) = (req.migration_id, req.owner_epoch) else {
            return Ok(());
        };
        let recorded = match &self.migration.role {
            Some(MigrationRole::Outgoing(r)) if r.request.migration_id == Some(op) => {
                r.request.owner_epoch
            }
            _ => None,
        };
        let seen = match self.migration.newest_owner {
            Some((o, e)) if o == op => Some(e),
            _ => None,
        };
        let newest = recorded.max(seen);
        if let Some(newest) = newest.filter(|n| *n > epoch) {
            tracing::warn!(operation_id = %op, epoch, newest, "migration command from a stale owner refused");
            return Err(Error::Conflict(format!(
                "stale owner: migration {op} is run by its owner of epoch {newest}, this request \
                 has epoch {epoch} (another controller took the operation over)"
            )));
        }
        self.migration.newest_owner = Some((op, epoch));
        Ok(())
    }

    fn spawn_outgoing(
        &mut self,
        qmp: Qmp,
        record: OutgoingRecord,
        resume: bool,
        credential: Option<MigrationCredential>,
    ) {
        let target = uri_address(&record.request.target.migration_uri);
        let ctx = Context {
            id: self.id,
            qmp,
            dir: self.dir.clone(),
            progress: self.migration.progress.clone(),
            last_beat: self.last_beat.clone(),
            record,
            tls: self.migration.tls.for_migration(credential.as_ref()),
            on_switch_over: Some(self.hand_over_at_switch_over(target)),
        };
        self.migration.outgoing = Some(OutgoingTask::spawn(ctx, resume));
    }

    /// Cancel: the task cancels a migration in flight and answers when done; otherwise the
    /// VM is made to run here (a completed migration is undone with `cont`).
    pub(super) async fn migrate_cancel(&mut self, reply: Reply<MigrationProgress>) {
        if let Some(task) = &self.migration.outgoing {
            if self.migration.progress.borrow().phase == MigrationPhase::PostCopy {
                let _ = reply.send(Err(Error::Conflict(format!(
                    "VM {} is in post-copy: it already runs on the target",
                    self.id
                ))));
                return;
            }
            task.cancel();
            self.migration.cancel_replies.push(reply);
            return;
        }
        let answer = self.resume_here().await;
        let _ = reply.send(answer);
    }

    /// No migration in flight: the VM runs here afterwards.
    async fn resume_here(&mut self) -> Result<MigrationProgress> {
        let state = self.status.borrow().state;
        let qmp = self.qmp().await;
        if state == VmRunState::Migrated {
            let qmp = qmp.ok_or_else(|| Error::QemuFailed("QMP is unavailable".into()))?;
            qmp.cont().await.map_err(|e| {
                Error::Conflict(format!(
                    "cannot resume VM {} here (does it still run on the target? delete it \
                     there first): {}",
                    self.id,
                    error_chain(&e)
                ))
            })?;
            tracing::info!("completed migration undone: the VM runs here again");
            self.update(|s| s.state = VmRunState::Running);
            self.migration
                .progress
                .send_modify(|p| p.phase = MigrationPhase::Cancelled);
            self.persist_progress();
        } else if let (VmRunState::Running, Some(qmp)) = (state, qmp) {
            if qmp.query_status().await.is_ok_and(|s| s.status == "paused") {
                tracing::info!("resuming the paused guest");
                qmp.cont().await?;
            }
        }
        Ok(self.migration.progress.borrow().clone())
    }

    fn persist_progress(&mut self) {
        if let Some(MigrationRole::Outgoing(mut record)) = self.migration.role.clone() {
            record.progress = self.migration.progress.borrow().clone();
            self.set_role(MigrationRole::Outgoing(record));
        }
    }

    /// The outgoing task ended.
    pub(super) async fn on_outgoing_end(&mut self, outcome: Outcome) {
        self.migration.outgoing = None;
        self.persist_progress();
        match &outcome {
            Outcome::Completed => {
                tracing::info!("VM migrated away; QEMU stays paused here");
                self.update(|s| s.state = VmRunState::Migrated);
            }
            Outcome::Failed(reason) => tracing::warn!(reason, "migration failed"),
            Outcome::Cancelled => tracing::info!("migration cancelled"),
        }
        let replies = std::mem::take(&mut self.migration.cancel_replies);
        if replies.is_empty() {
            return;
        }
        // A cancel that came during switch-over gets the outcome. A completed migration is
        // not undone here: the target may run the guest already, and only the controller
        // can delete that copy first (then its next cancel resumes the VM here).
        let answer = self.migration.progress.borrow().clone();
        for reply in replies {
            let _ = reply.send(Ok(answer.clone()));
        }
    }

    /// RESUME: on a target, the migrated guest now runs here.
    pub(super) fn on_resume(&mut self, ts: QmpTimestamp) {
        let ms = unix_ms(ts);
        if !self.status.borrow().incoming {
            // After a switch-over that failed, or a completed migration undone: the floating
            // IPs handed over come back.
            self.spawn_network(|network, spec| async move { network.resumed_here(&spec).await });
            self.update(|s| s.resumed_unix_ms = ms);
            return;
        }
        tracing::info!(resumed_unix_ms = ms, "the migrated guest resumed here");
        // Ready here if it was on the source: a cloud image has no heartbeat, and its
        // cloud-init reports only after a boot. Once only: a later reboot clears it.
        let was_ready =
            matches!(&self.migration.role, Some(MigrationRole::Incoming(r)) if r.guest_ready);
        self.update(|s| {
            s.state = VmRunState::Running;
            s.incoming = false;
            s.resumed_unix_ms = ms;
            if was_ready {
                s.guest_ready = true;
                s.ready_via = Some(nimbus_api::ReadySource::Resumed);
            }
        });
        self.incoming_done();
    }

    /// MIGRATION event: on a waiting target, `failed` means the VM never arrives. QEMU
    /// exits by itself (`exit-on-error`, QEMU's default), which then gives the reason in
    /// its words; the VM is `crashed` from the event on, never `running`.
    pub(super) fn on_migration_status(&mut self, status: &str) {
        tracing::debug!(status, "MIGRATION event");
        if status == "failed" && self.status.borrow().incoming {
            tracing::warn!("incoming migration failed");
            self.migration.tunnels.clear();
            self.update(|s| {
                s.state = VmRunState::Crashed;
                s.reason = Some("incoming migration failed".into());
            });
        }
    }

    /// Each tick, on a target whose QEMU waits for the VM: gives the migration up (kills
    /// that QEMU; the VM runs on at its source) once nothing arrives within the bound (see
    /// [`crate::migration::receive_watch`]). Never once the guest resumed here.
    pub(super) async fn poll_receiving(&mut self) {
        let now = tokio::time::Instant::now();
        let Some(watch) = self.migration.receiving.as_mut() else {
            return;
        };
        let waiting = {
            let s = self.status.borrow();
            s.incoming && s.state != VmRunState::Running && self.run.is_some()
        };
        if !waiting {
            self.migration.receiving = None;
            return;
        }
        if !watch.due(now) {
            return;
        }
        let received = match receive_watch::bytes_received(watch.ports()).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read what the incoming migration received; not watching it");
                self.migration.receiving = None;
                return;
            }
        };
        let Err(gave_up) = watch.observe(received, now) else {
            return;
        };
        self.migration.receiving = None;
        self.migration.tunnels.clear();
        tracing::warn!(reason = %gave_up, "incoming migration given up");
        if let Some(run) = self.run.as_mut() {
            if let Err(e) = run.qemu.kill(std::time::Duration::ZERO).await {
                tracing::error!(error = error_chain(&e), "cannot kill the waiting QEMU");
                return;
            }
        }
        self.run = None;
        self.update(|s| {
            s.state = VmRunState::Crashed;
            s.reason = Some(format!("incoming migration given up: {gave_up}"));
            s.pid = None;
            s.guest_ready = false;
            s.incoming = false;
        });
    }

    /// Marks the incoming migration done and closes its endpoints.
    fn incoming_done(&mut self) {
        let Some(MigrationRole::Incoming(mut record)) = self.migration.role.clone() else {
            return;
        };
        record.resumed = true;
        let mirror = record.disk == DiskTransfer::Mirror;
        for tunnel in std::mem::take(&mut self.migration.tunnels) {
            // Post-copy still moves pages after the guest resumed: the source closes.
            tunnel.close_when_done(TUNNEL_DRAIN);
        }
        self.set_role(MigrationRole::Incoming(record));
        self.spawn_network(|network, spec| async move { network.arrived(&spec).await });
        if let Some(qmp) = self.current_qmp() {
            tokio::spawn(incoming::finish(qmp, mirror).in_current_span());
        }
    }

    /// Claims the VM's floating IPs here in the background (`change` is
    /// [`HostNetwork::arrived`] or [`HostNetwork::resumed_here`]), in the VM's network turn:
    /// its peers wait for it, the actor does not.
    fn spawn_network<F, Fut>(&self, change: F)
    where
        F: FnOnce(Arc<HostNetwork>, VmSpec) -> Fut,
        Fut: std::future::Future<Output = Result<(), NetError>> + Send + 'static,
    {
        let turn = self.migration.network_turn.clone();
        let done = change(self.network.clone(), self.spec.clone());
        let task = async move {
            let _turn = turn.lock_owned().await;
            if let Err(e) = done.await {
                tracing::warn!(error = %e, "the floating IPs of the VM not claimed here");
            }
        };
        tokio::spawn(task.in_current_span());
    }

    /// What the outgoing task calls when the guest stops for the switch-over: hands its
    /// floating IPs over to `target` (its underlay address; [`HostNetwork::handing_over`]) in the background,
    /// having taken the VM's network turn at once, so that a resume here after it claims
    /// them back only after the hand-over.
    fn hand_over_at_switch_over(
        &self,
        target: Option<std::net::IpAddr>,
    ) -> Box<dyn FnOnce() + Send + Sync> {
        let (network, spec) = (self.network.clone(), self.spec.clone());
        let turn = self.migration.network_turn.clone();
        Box::new(move || {
            let now = turn.clone().try_lock_owned();
            let task = async move {
                let _turn = match now {
                    Ok(held) => held,
                    Err(_) => turn.lock_owned().await,
                };
                if let Err(e) = network.handing_over(&spec, target).await {
                    tracing::warn!(error = %e, "the floating IPs not handed over to the target");
                }
            };
            tokio::spawn(task.in_current_span());
        })
    }

    /// Each tick: records the first heartbeat of the current QEMU; a guest that arrived
    /// by migration is ready once it beats here (its ready marker was printed on the
    /// source's console and will not come again).
    pub(super) fn poll_heartbeat(&mut self) {
        let (pid, first, ready, state) = {
            let s = self.status.borrow();
            (s.pid, s.first_heartbeat_unix_ms, s.guest_ready, s.state)
        };
        if pid.is_none() {
            return;
        }
        let beat = self.last_beat.first_unix_ms();
        let arrived = matches!(&self.migration.role,
            Some(MigrationRole::Incoming(r)) if r.resumed);
        let record_first = first.is_none() && beat.is_some();
        let now_ready =
            arrived && !ready && state == VmRunState::Running && (first.or(beat)).is_some();
        if record_first || now_ready {
            self.update(|s| {
                s.first_heartbeat_unix_ms = s.first_heartbeat_unix_ms.or(beat);
                if now_ready {
                    s.guest_ready = true;
                    s.ready_via = Some(nimbus_api::ReadySource::Resumed);
                }
            });
        }
    }

    /// At actor start: loads the migration role and re-adopts a VM found in a migration
    /// state (a waiting target, a migration in flight, a paused source).
    pub(super) async fn reconcile_migration(&mut self) {
        let role = role::read(&self.dir).unwrap_or_else(|e| {
            tracing::warn!(error = %e.chain(), "cannot read the migration role");
            None
        });
        self.migration.role = role.clone();
        match role {
            Some(MigrationRole::Incoming(_)) if self.status.borrow().incoming => {
                self.reconcile_incoming().await
            }
            Some(MigrationRole::Outgoing(record)) => self.reconcile_outgoing(record).await,
            _ => {}
        }
    }

    async fn reconcile_incoming(&mut self) {
        let status = match self.qmp().await {
            Some(qmp) => qmp.query_status().await,
            None => {
                // QEMU is gone: the manager already marked the VM crashed.
                self.update(|s| s.incoming = false);
                return;
            }
        };
        match status {
            Ok(s) if s.running => {
                tracing::info!("the incoming migration completed while the agent was away");
                self.update(|s| {
                    s.state = VmRunState::Running;
                    s.incoming = false;
                });
                self.incoming_done();
            }
            Ok(s) => tracing::info!(
                status = s.status,
                "still waiting for the incoming migration"
            ),
            Err(e) => tracing::warn!(error = %e, "cannot read the waiting target's status"),
        }
    }

    async fn reconcile_outgoing(&mut self, record: OutgoingRecord) {
        let phase = record.progress.phase;
        self.migration
            .progress
            .send_replace(record.progress.clone());
        let qmp = self.qmp().await;
        if phase == MigrationPhase::Completed {
            if let Some(qmp) = qmp {
                if qmp
                    .query_status()
                    .await
                    .is_ok_and(|s| s.status == "postmigrate")
                {
                    self.update(|s| s.state = VmRunState::Migrated);
                }
            }
            return;
        }
        if phase.is_final() || phase == MigrationPhase::None {
            return;
        }
        match qmp {
            Some(qmp) => {
                tracing::info!(?phase, "resuming to follow the migration in flight");
                // Its own certificate was lost with the agent: a migration taken over before
                // `migrate` falls back to the host's key (see tls.rs).
                self.spawn_outgoing(qmp, record, true, None);
            }
            None => {
                self.migration.progress.send_modify(|p| {
                    p.phase = MigrationPhase::Failed;
                    p.error = Some("QEMU exited while the agent was down".into());
                });
                self.persist_progress();
            }
        }
    }
}
