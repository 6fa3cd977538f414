//! The actor's side of checkpoints: what must happen to the running QEMU. The files
//! (manifests, chunks, layers) are handled by [`crate::snapshot`].

use super::Actor;
use crate::error::{error_chain, Error, Result};
use crate::migration::disk_mirror::DISK_DEVICE;
use crate::snapshot::layers::{self, NewTop};
use crate::snapshot::{failpoint, memory};
use nimbus_agent_api::VmRunState;
use nimbus_qemu::Qmp;
use std::path::PathBuf;
use std::time::Duration;

/// Freeze the top disk layer under `new_top`; with `stream`, write memory there too.
#[derive(Debug)]
pub(crate) struct TakePlan {
    pub new_top: NewTop,
    pub stream: Option<PathBuf>,
    /// Stop the VM late, while QEMU prepares RAM (see [`memory::migrate_then_stop`]), once
    /// this QEMU's preparation was measured.
    pub late_stop: bool,
    /// Released once the VM resumed: the chunker starts then, not to take a core from QEMU
    /// inside the pause.
    pub on_resume: Option<crate::snapshot::follow::Release>,
}

/// What became of a snapshot's pause.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Taken {
    /// The disk is frozen and the memory image is written; the VM was paused so long.
    Frozen { pause_ms: f64 },
    /// A late stop could not prove it came first: nothing was taken, the VM runs on, and the
    /// snapshot must be taken again without a late stop. The VM was paused so long for
    /// nothing (QEMU's own pause, and ours while the image was cancelled).
    Again { pause_ms: f64 },
}

/// Replace the running VM by one on `top`, resumed from `stream` when given (else booted).
#[derive(Debug)]
pub(crate) struct RestorePlan {
    pub top: PathBuf,
    pub stream: Option<PathBuf>,
}

/// Merge the layers under `layer` down to `base` into `layer` (live `block-stream`).
#[derive(Debug)]
pub(crate) struct StreamPlan {
    pub layer: PathBuf,
    pub base: Option<PathBuf>,
}

impl Actor {
    fn is_running_here(&self) -> bool {
        let s = self.status.borrow();
        s.state == VmRunState::Running && !s.incoming && self.run.is_some() && self.stop.is_none()
    }

    fn is_idle_stopped(&self) -> bool {
        let s = self.status.borrow().state;
        self.run.is_none() && matches!(s, VmRunState::Stopped | VmRunState::Crashed)
    }

    fn refuse_if_migrating(&self) -> Result<()> {
        match self.migration_in_flight() {
            true => Err(Error::Conflict(format!("VM {} is migrating", self.id))),
            false => Ok(()),
        }
    }

    async fn live_qmp(&mut self) -> Result<Qmp> {
        self.qmp()
            .await
            .ok_or_else(|| Error::QemuFailed("QMP is unavailable".into()))
    }

    /// Freezes the disk (and starts the memory image) in one short pause.
    pub(super) async fn take_snapshot(&mut self, plan: TakePlan) -> Result<Taken> {
        self.refuse_if_migrating()?;
        if !self.is_running_here() {
            if plan.stream.is_none() && self.is_idle_stopped() {
                self.dir.set_top_disk(&plan.new_top.path)?;
                return Ok(Taken::Frozen { pause_ms: 0.0 });
            }
            let state = self.status.borrow().state;
            return Err(Error::Conflict(format!(
                "VM {} is {state:?}: a snapshot with memory needs it running (a disk-only \
                 snapshot needs it running or stopped)",
                self.id
            )));
        }
        let qmp = self.live_qmp().await?;
        let mut events = qmp.events();
        // Independent of each other: sent together, not one round trip after another.
        let (top_node, (), ()) = tokio::try_join!(
            async { qmp.top_node(DISK_DEVICE).await.map_err(Error::from) },
            async {
                qmp.blockdev_add_overlay(&plan.new_top.node, &plan.new_top.path)
                    .await
                    .map_err(Error::from)
            },
            async {
                match plan.stream {
                    Some(_) => memory::set_background(&qmp, true)
                        .await
                        .map_err(Error::from),
                    None => Ok(()),
                }
            },
        )?;
        let old_top = self.dir.top_disk();
        // The link first, before the pause: after a crash from here on, a relaunch finds the
        // old layer under the new, empty one, which is the same disk.
        self.dir.set_top_disk(&plan.new_top.path)?;
        let t0 = std::time::Instant::now();
        let uri = plan.stream.as_deref().map(memory::image_uri);
        let mut migration_events = qmp.events();
        // Tests make a late stop lose: stopped after QEMU's whole pause.
        let late_lead = match failpoint::is_set("take.late_stop_loses") {
            true => Some(memory::LATE_STOP_MAX_LEAD),
            false => self.run.as_ref().and_then(|r| r.snapshot_lead),
        };
        let (stopped, started, switched) = match (&uri, late_lead) {
            (Some(uri), Some(lead)) if plan.late_stop => {
                match memory::migrate_then_stop(&qmp, uri, lead).await {
                    Ok(memory::LateStop::First) => {
                        let switched = qmp.blockdev_snapshot(&top_node, &plan.new_top.node).await;
                        (Ok(()), Ok(()), switched)
                    }
                    unproven => {
                        let node = &plan.new_top.node;
                        return self
                            .undo_late_stop(&qmp, node, &old_top, lead, &mut events, unproven)
                            .await;
                    }
                }
            }
            // Stop first, then the rest in one batch (QMP runs them in order), so the pause
            // is what QEMU needs rather than our round trips. `migrate` before
            // `blockdev-snapshot`: QEMU runs that switch while its migration thread
            // prepares RAM (see [`memory`]); both are as of our `stop`, since a VM we
            // paused stays paused until our `cont`.
            _ => tokio::join!(
                qmp.stop(),
                async {
                    match &uri {
                        Some(uri) => qmp.migrate(uri).await,
                        None => Ok(()),
                    }
                },
                qmp.blockdev_snapshot(&top_node, &plan.new_top.node),
            ),
        };
        let sent = t0.elapsed();
        let (switched_ok, started_ok) = (switched.is_ok(), started.is_ok() && uri.is_some());
        let mut preparation = None;
        let frozen = match (stopped, switched, started) {
            (Ok(()), Ok(()), Ok(())) if uri.is_some() => {
                memory::wait_flowing(&qmp, &mut migration_events)
                    .await
                    .map(|p| preparation = p)
                    .and_then(|()| failpoint::check("take.in_pause"))
            }
            (Ok(()), Ok(()), Ok(())) => failpoint::check("take.in_pause"),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => Err(Error::from(e)),
        };
        let flowing = t0.elapsed();
        let resumed = qmp.cont().await;
        if let Some(release) = &plan.on_resume {
            release.release();
        }
        let pause_ms = memory::pause_from_events(&mut events);
        // `preparation`: QEMU touching RAM, `setup` to `active` (after a late stop, partly
        // before the pause).
        tracing::info!(?sent, ?preparation, ?flowing, resumed = ?t0.elapsed(), pause_ms, "snapshot pause");
        if let Err(e) = frozen {
            if started_ok {
                memory::cancel(&qmp).await;
            }
            if !switched_ok {
                self.dir.set_top_disk(&old_top)?;
                let _ = qmp.blockdev_del(&plan.new_top.node).await;
            }
            let _ = memory::set_background(&qmp, false).await;
            if let Err(cont) = resumed {
                tracing::error!(
                    error = error_chain(&cont),
                    "cannot resume the VM after a failed snapshot"
                );
            }
            return Err(e);
        }
        resumed?;
        if plan.stream.is_some() {
            // The capability goes off once the snapshot is answered (see
            // [`Actor::background_snapshot_off`]).
            memory::wait_written(&qmp, &mut events).await?;
        }
        if let (Some(run), Some(preparation)) = (self.run.as_mut(), preparation) {
            let lead = preparation.mul_f64(run.late_stop_share);
            let usable = !lead.is_zero()
                && lead <= memory::LATE_STOP_MAX_LEAD
                && run.late_stop_share >= memory::LATE_STOP_MIN_SHARE;
            run.snapshot_lead = usable.then_some(lead);
        }
        tracing::info!(pause_ms, layer = %old_top.display(), "snapshot taken");
        Ok(Taken::Frozen { pause_ms })
    }

    /// Undoes a late stop not proven first (QEMU may have stopped and resumed the VM itself
    /// first), or failed: nothing is taken. Unless QEMU is known to have resumed the VM
    /// already ([`memory::LateStop::NotProven`]), the image is cancelled before the VM
    /// resumes: QEMU's thread, once gone, can no longer stop the VM or set its run state
    /// back to the one it found. Then the layer switch is undone and the lead backs off.
    async fn undo_late_stop(
        &mut self,
        qmp: &Qmp,
        new_top_node: &str,
        old_top: &std::path::Path,
        lead: Duration,
        events: &mut tokio::sync::broadcast::Receiver<nimbus_qemu::qmp::QmpEvent>,
        unproven: std::result::Result<memory::LateStop, nimbus_qemu::QmpError>,
    ) -> Result<Taken> {
        let cancelling = std::time::Instant::now();
        let resumed = match unproven {
            Ok(memory::LateStop::NotProven { qemu_resumed: true }) => {
                let resumed = qmp.cont().await;
                memory::cancel(qmp).await;
                resumed
            }
            _ => {
                memory::cancel(qmp).await;
                qmp.cont().await
            }
        };
        // What the guest went through for nothing: the first pause (QEMU's own, when its
        // thread stopped first) and ours, until the cancellation or only its `cont`.
        let cancelled = cancelling.elapsed();
        let pause_ms = memory::pause_from_events(events);
        let relinked = self.dir.set_top_disk(old_top);
        let _ = qmp.blockdev_del(new_top_node).await;
        if let Some(run) = self.run.as_mut() {
            run.snapshot_lead = None;
            run.late_stop_share /= 2.0;
        }
        tracing::info!(
            ?lead,
            pause_ms,
            ?cancelled,
            result = ?unproven.as_ref().map_err(|e| error_chain(e)),
            "late stop not proven first; taking the snapshot again"
        );
        relinked?;
        resumed?;
        Ok(Taken::Again { pause_ms })
    }

    /// After a memory snapshot was answered: the background-snapshot capability off again,
    /// before this VM's next command (a `migrate` with it on would be a snapshot, not a
    /// migration; live migrations also set it off themselves). Not inside the snapshot:
    /// QEMU answers only after its clean-up of the snapshot, 40-60 ms after a second one.
    pub(super) async fn background_snapshot_off(&mut self) {
        let Some(qmp) = self.qmp().await else {
            return;
        };
        if let Err(e) = memory::set_background(&qmp, false).await {
            tracing::warn!(
                error = error_chain(&e),
                "cannot turn the background-snapshot capability off"
            );
        }
    }

    /// Replaces the VM by one restored from a snapshot. The caller validated everything;
    /// from the kill on, a failure puts the old top back (the disk is as before) and leaves
    /// the VM crashed, with the reason.
    pub(super) async fn restore(&mut self, plan: RestorePlan) -> Result<()> {
        if self.migration_in_flight() || self.stop.is_some() {
            return Err(Error::Conflict(format!(
                "VM {} is busy (migrating or stopping)",
                self.id
            )));
        }
        let old_top = self.dir.top_disk();
        if let Some(run) = &mut self.run {
            run.stop_requested = true;
            run.qemu.kill(Duration::ZERO).await.map_err(|e| {
                Error::QemuFailed(format!("cannot end the running QEMU: {}", error_chain(&e)))
            })?;
            self.run = None;
        }
        self.update(|s| {
            s.state = VmRunState::Stopped;
            s.pid = None;
        });
        self.dir.set_top_disk(&plan.top)?;
        let restored = self.resume_from(plan.stream.as_deref()).await;
        if let Err(e) = &restored {
            tracing::warn!(error = %e.chain(), "restore failed; the disk is as before it");
            if let Some(run) = &mut self.run {
                let _ = run.qemu.kill(Duration::ZERO).await;
            }
            self.run = None;
            let _ = self.dir.set_top_disk(&old_top);
            let reason = format!(
                "restore failed: {}; the disk is as before the restore (start the instance to \
                 boot it)",
                e.chain()
            );
            self.update(|s| {
                s.state = VmRunState::Crashed;
                s.reason = Some(reason);
                s.pid = None;
                s.incoming = false;
            });
        }
        restored
    }

    async fn resume_from(&mut self, stream: Option<&std::path::Path>) -> Result<()> {
        failpoint::check("restore.after_kill")?;
        let Some(stream) = stream else {
            return self.launch(false).await;
        };
        self.launch(true).await?;
        let qmp = self.live_qmp().await?;
        memory::load(&qmp, stream).await?;
        qmp.cont().await?;
        // The guest was up when the snapshot was taken; it prints no ready line again.
        self.update(|s| {
            s.state = VmRunState::Running;
            s.incoming = false;
            s.guest_ready = true;
            s.ready_via = Some(nimbus_api::ReadySource::Resumed);
        });
        if let Err(e) = qmp.announce_self().await {
            tracing::warn!(error = error_chain(&e), "announce-self failed");
        }
        Ok(())
    }

    /// Pulls the data of the layers between `plan.layer` and `plan.base` into `plan.layer`
    /// while the VM runs, so that a layer in between can go.
    pub(super) async fn stream_layer(&mut self, plan: StreamPlan) -> Result<()> {
        self.refuse_if_migrating()?;
        let qmp = self.live_qmp().await?;
        let nodes = qmp.block_nodes().await?;
        let node_of = |path: &std::path::Path| {
            nodes
                .iter()
                .find(|n| n.drv == "qcow2" && layers::same_file(&n.file, path))
                .map(|n| n.node_name.clone())
        };
        let node = node_of(&plan.layer).ok_or_else(|| {
            Error::Internal(format!("QEMU has no node for {}", plan.layer.display()))
        })?;
        let base =
            match &plan.base {
                Some(b) => Some(node_of(b).ok_or_else(|| {
                    Error::Internal(format!("QEMU has no node for {}", b.display()))
                })?),
                None => None,
            };
        let job = format!("stream-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        qmp.block_stream(&job, &node, base.as_deref(), plan.base.as_deref())
            .await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3600);
        loop {
            let jobs = qmp.query_block_jobs().await?;
            match jobs.iter().find(|j| j.device == job) {
                None => break,
                Some(j) if j.io_status.as_deref().is_some_and(|s| s != "ok") => {
                    return Err(Error::QemuFailed(format!(
                        "merging disk layers failed ({})",
                        j.io_status.as_deref().unwrap_or("")
                    )))
                }
                Some(_) => {}
            }
            if tokio::time::Instant::now() > deadline {
                return Err(Error::Timeout(
                    "merging disk layers took over an hour".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let now = layers::backing_of(&plan.layer).await?.map(|(b, _)| b);
        let merged = match (&now, &plan.base) {
            (Some(a), Some(b)) => layers::same_file(a, b),
            (None, None) => true,
            _ => false,
        };
        if !merged {
            return Err(Error::QemuFailed(format!(
                "merging into {} did not complete (its backing is {now:?})",
                plan.layer.display()
            )));
        }
        Ok(())
    }

    /// Makes QEMU write out what it holds of the VM's disks (data and qcow2 metadata) and
    /// sync them; before a merged layer is deleted, since QEMU's `block-stream` does not: once
    /// the job has rewritten the layer's header, what it copied is mapped only in QEMU's qcow2
    /// cache, and a QEMU killed before the guest's next flush would lose the data once the
    /// merged layer is gone. The top layer's file is synced first, without a pause (the copied
    /// data); QMP has no flush command, so then a `stop` writes QEMU's metadata out and syncs,
    /// the VM paused meanwhile (QEMU does not report a failed flush there). A VM that ran, or
    /// was suspended, is resumed whatever `stop` answered.
    pub(super) async fn flush_disks(&mut self) -> Result<()> {
        self.refuse_if_migrating()?;
        let Some(qmp) = self.qmp().await else {
            return Ok(());
        };
        let top = self.dir.top_disk();
        crate::snapshot::blocking(move || {
            std::fs::File::open(&top)
                .and_then(|f| f.sync_data())
                .map_err(Error::io("sync", &top))
        })
        .await?;
        let status = qmp.query_status().await?.status;
        let resume = matches!(status.as_str(), "running" | "suspended");
        let started = std::time::Instant::now();
        let stopped = qmp.stop().await;
        let resumed = match resume {
            true => qmp.cont().await,
            false => Ok(()),
        };
        tracing::info!(%status, took = ?started.elapsed(), "disks flushed");
        stopped?;
        resumed?;
        Ok(())
    }
}
