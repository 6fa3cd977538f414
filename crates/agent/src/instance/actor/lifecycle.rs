//! Launching, adopting, stopping, rebooting and killing: the lifecycle half of the actor.

use super::{Actor, PendingStop, Run, LAUNCH_TIMEOUT, QMP_TIMEOUT};
use crate::error::{error_chain, Error, Result};
use crate::instance::heartbeat;
use crate::instance::marker::MarkerFollower;
use crate::instance::state::{self, Intent, StartAction};
use crate::instance::{disk, launch, Reply};
use chrono::Utc;
use nimbus_agent_api::{StopRequest, VmRunState};
use nimbus_qemu::{QemuProcess, Qmp};
use std::time::Duration;
use tokio::time::Instant;

/// QEMU's run state while it waits for (or receives) an incoming migration.
const INMIGRATE: &str = "inmigrate";

impl Actor {
    pub(super) async fn start(&mut self) -> Result<()> {
        self.launch(false).await
    }

    /// Launches QEMU; `incoming` makes it wait for a migration (`-incoming defer`) in state
    /// `starting` until the guest resumes.
    pub(super) async fn launch(&mut self, incoming: bool) -> Result<()> {
        let current = self.status.borrow().state;
        match state::on_start(current) {
            StartAction::AlreadyRunning if self.run.is_some() => return Ok(()),
            StartAction::Refuse => {
                return Err(Error::Conflict(format!("VM {} is {current:?}", self.id)))
            }
            _ => {}
        }
        if let Some(qemu) = QemuProcess::adopt(self.dir.paths()) {
            tracing::warn!(
                pid = qemu.pid(),
                "a QEMU already runs for this VM: adopting it"
            );
            self.attach(qemu, None, false).await;
            self.adopt_ports().await;
            return Ok(());
        }
        disk::check_image(&self.spec)?;
        crate::instance::seed::ensure(&self.dir, &self.spec).await?;
        crate::instance::firmware::ensure(&self.dir, &self.spec).await?;
        if !incoming {
            crate::snapshot::layers::collapse_if_flat(&self.dir).await?;
        }
        let disk = self.dir.top_disk();
        if !disk.is_file() {
            return Err(Error::Internal(format!(
                "instance disk {} is missing",
                disk.display()
            )));
        }
        let mut config = launch::prepare(&self.spec, &self.dir, self.accel, &self.network).await?;
        config.incoming = incoming.then(|| "defer".to_string());
        crate::confine::prepare(&mut config, &self.dir, self.id)?;
        let offset = self.dir.console_len();
        self.update(|s| {
            s.state = VmRunState::Starting;
            s.reason = None;
            s.intent = Intent::Run;
            s.console_offset = offset;
            s.guest_ready = false;
            s.pid = None;
            s.started_at = None;
            s.incoming = incoming;
            s.resumed_unix_ms = None;
            s.first_heartbeat_unix_ms = None;
        });
        let program = nimbus_qemu::qemu_binary();
        let launched = match QemuProcess::spawn(&program, &config, self.dir.paths()) {
            Ok(mut qemu) => {
                let pid = qemu.pid();
                self.update(|s| s.pid = Some(pid));
                if let Err(e) = crate::confine::place(&self.spec, pid) {
                    // Fail closed: no VM runs outside its limits.
                    let _ = qemu.kill(Duration::ZERO).await;
                    self.update(|s| {
                        s.state = VmRunState::Crashed;
                        s.reason = Some(format!("cannot confine QEMU: {e}"));
                        s.pid = None;
                    });
                    return Err(e);
                }
                match qemu.wait_for_qmp(LAUNCH_TIMEOUT).await {
                    Ok(qmp) => Ok((qemu, qmp)),
                    Err(e) => {
                        let _ = qemu.kill(Duration::ZERO).await;
                        Err(e)
                    }
                }
            }
            Err(e) => Err(e),
        };
        match launched {
            Ok((qemu, qmp)) => {
                self.last_beat.clear();
                self.attach(qemu, Some(qmp), true).await;
                tracing::info!("VM started");
                Ok(())
            }
            Err(e) => {
                let msg = error_chain(&e);
                tracing::warn!(error = msg, "QEMU failed to start");
                self.update(|s| {
                    s.state = VmRunState::Crashed;
                    s.reason = Some(msg.clone());
                    s.pid = None;
                });
                Err(Error::QemuFailed(msg))
            }
        }
    }

    /// Takes charge of a running QEMU: QMP (connected here unless given), heartbeat, ready
    /// marker. `fresh` when we just launched it (rather than adopted it).
    pub(super) async fn attach(&mut self, qemu: QemuProcess, qmp: Option<Qmp>, fresh: bool) {
        let paths = self.dir.paths().clone();
        let qmp = match qmp {
            Some(q) => Ok(q),
            None => Qmp::connect(&paths.qmp_sock(), QMP_TIMEOUT).await,
        };
        let qmp = match qmp {
            Ok(q) => Some(q),
            Err(e) => {
                tracing::warn!(
                    error = error_chain(&e),
                    "cannot connect to QMP; will retry on demand"
                );
                None
            }
        };
        let pid = qemu.pid();
        let (offset, started_at) = {
            let s = self.status.borrow();
            (s.console_offset, s.started_at)
        };
        let started_at = if fresh { None } else { started_at };
        self.run = Some(Run {
            events: qmp.as_ref().map(Qmp::events),
            qmp,
            heartbeat: heartbeat::spawn(
                self.id,
                paths.heartbeat_sock(),
                self.dir.heartbeat_log(),
                self.last_beat.clone(),
            ),
            marker: MarkerFollower::new(
                paths.console_log(),
                self.spec.image.ready_marker.clone(),
                offset,
            ),
            qemu,
            stop_requested: false,
            guest_powered_off: false,
            freeze: Default::default(),
        });
        self.update(|s| {
            // A QEMU waiting for an incoming migration runs no guest yet.
            s.state = if s.incoming {
                VmRunState::Starting
            } else {
                VmRunState::Running
            };
            s.reason = None;
            s.pid = Some(pid);
            s.intent = Intent::Run;
            s.started_at = Some(started_at.unwrap_or_else(Utc::now));
            if fresh {
                s.guest_ready = false;
                s.booted_unix_ms = super::ready::unix_ms_now();
            }
        });
        self.poll_ready();
    }

    /// The ports of a QEMU this agent adopted (it restarted): their rules, DHCP lease and
    /// gateway again; their floating IPs are claimed here only if the guest runs here. A
    /// QEMU that still waits for an incoming migration has no guest yet (it runs on the
    /// source, whose router alone reaches it): asked over QMP, not taken from the recorded
    /// state, which may predate the switch-over.
    pub(super) async fn adopt_ports(&mut self) {
        if self.spec.nics.is_empty() {
            return;
        }
        if self.waits_for_migration().await {
            self.network.expect_arrival(&self.spec).await;
        }
        if let Err(e) = self.network.protect(&self.spec).await {
            tracing::warn!(error = %e, "cannot re-apply port security; the VM's ports send nothing until it is relaunched");
        }
    }

    /// Whether QEMU waits for (or is receiving) an incoming migration (its run state is
    /// `inmigrate`); what the recorded state says when QMP cannot answer.
    async fn waits_for_migration(&mut self) -> bool {
        let recorded = self.status.borrow().incoming;
        let Some(qmp) = self.qmp().await else {
            return recorded;
        };
        match qmp.query_status().await {
            Ok(s) => s.status == INMIGRATE,
            Err(e) => {
                tracing::warn!(
                    error = error_chain(&e),
                    "cannot read QEMU's run state; taking the recorded one"
                );
                recorded
            }
        }
    }

    pub(super) async fn stop(&mut self, req: StopRequest, reply: Reply) {
        let Some(run) = &mut self.run else {
            // Nothing runs: the VM is stopped (a crashed one is acknowledged as stopped).
            let s = self.status.borrow().clone();
            if s.state != VmRunState::Stopped || s.intent != Intent::Stop {
                self.update(|s| {
                    s.state = VmRunState::Stopped;
                    s.reason = None;
                    s.pid = None;
                    s.intent = Intent::Stop;
                });
            }
            let _ = reply.send(Ok(()));
            return;
        };
        run.stop_requested = true;
        if let Some(stop) = &mut self.stop {
            stop.replies.push(reply);
            if req.force {
                self.escalate_stop(true).await;
            }
            return;
        }
        self.stop = Some(PendingStop {
            deadline: Instant::now() + Duration::from_secs(req.timeout_secs),
            replies: vec![reply],
            escalated: false,
        });
        self.update(|s| {
            s.state = VmRunState::Stopping;
            s.intent = Intent::Stop;
        });
        if req.force {
            self.escalate_stop(true).await;
            return;
        }
        tracing::info!(timeout_secs = req.timeout_secs, "powering the guest down");
        let pressed = match self.qmp().await {
            Some(qmp) => qmp.system_powerdown().await.map_err(|e| error_chain(&e)),
            None => Err("QMP unavailable".to_string()),
        };
        if let Err(e) = pressed {
            tracing::warn!(error = e, "power button failed; ending QEMU");
            self.escalate_stop(false).await;
        }
    }

    /// Ends QEMU without the guest's cooperation: `quit` (unless `kill`), then signals.
    pub(super) async fn escalate_stop(&mut self, kill: bool) {
        if let Some(stop) = &mut self.stop {
            stop.escalated = true;
        }
        if !kill {
            if let Some(qmp) = self.qmp().await {
                tracing::info!("guest did not power off in time: quitting QEMU");
                if let Err(e) = qmp.quit().await {
                    tracing::warn!(error = error_chain(&e), "QMP quit failed");
                }
            }
        }
        let Some(run) = &mut self.run else { return };
        let grace = if kill {
            Duration::ZERO
        } else {
            Duration::from_secs(3)
        };
        if let Err(e) = run.qemu.kill(grace).await {
            let msg = error_chain(&e);
            tracing::error!(error = msg, "cannot end QEMU");
            if let Some(stop) = self.stop.take() {
                for reply in stop.replies {
                    let _ = reply.send(Err(Error::QemuFailed(msg.clone())));
                }
            }
        }
    }

    pub(super) async fn reboot(&mut self) -> Result<()> {
        if self.run.is_none()
            || self.stop.is_some()
            || self.status.borrow().state != VmRunState::Running
        {
            return Err(Error::Conflict(format!("VM {} is not running", self.id)));
        }
        let qmp = self
            .qmp()
            .await
            .ok_or_else(|| Error::QemuFailed("QMP is unavailable".into()))?;
        qmp.system_reset().await?;
        tracing::info!("VM reset");
        self.restart_marker();
        Ok(())
    }

    /// Delete: QEMU dies now, whatever it was doing.
    pub(super) async fn kill_now(&mut self) {
        let killed = match (&mut self.run, QemuProcess::adopt(self.dir.paths())) {
            (Some(run), _) => Some(run.qemu.kill(Duration::ZERO).await),
            (None, Some(mut orphan)) => Some(orphan.kill(Duration::ZERO).await),
            (None, None) => None,
        };
        if let Some(Err(e)) = killed {
            tracing::error!(error = error_chain(&e), "cannot kill QEMU");
        }
        self.run = None;
        if let Some(stop) = self.stop.take() {
            for reply in stop.replies {
                let _ = reply.send(Err(Error::Conflict(format!("VM {} was deleted", self.id))));
            }
        }
        self.status.send_modify(|s| {
            s.state = VmRunState::Stopped;
            s.pid = None;
            s.guest_ready = false;
            s.generation += 1;
        });
        tracing::info!("VM killed for deletion");
    }

    /// Agent shutdown: let go of QEMU, which keeps running.
    pub(super) fn detach(&mut self) {
        self.run = None;
        if let Some(stop) = self.stop.take() {
            for reply in stop.replies {
                let _ = reply.send(Err(Error::Internal("the agent is shutting down".into())));
            }
        }
        tracing::debug!("VM actor detached");
    }
}
