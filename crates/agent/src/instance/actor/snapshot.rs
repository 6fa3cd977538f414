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
use std::time::{Duration, Instant};

/// Freeze the top disk layer under `new_top`; with `stream`, write memory there too.
#[derive(Debug)]
pub(crate) struct TakePlan {
    pub new_top: NewTop,
    pub stream: Option<PathBuf>,
    /// May let QEMU pause the VM for the memory image and freeze the disk after (see
    /// [`memory::FreezeChoice`]); else the VM is stopped first.
    pub disk_after: bool,
    /// Released once the VM resumed: the chunker starts then, not to take a core from QEMU
    /// inside the pause.
    pub on_resume: Option<crate::snapshot::follow::Release>,
}

/// What became of a snapshot's pause.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Taken {
    /// The disk is frozen and the memory image is written; the VM was paused so long.
    Frozen { pause_ms: f64 },
    /// The guest wrote to its disk after QEMU's pause for the memory image: nothing was
    /// taken, the VM runs on, and the snapshot must be taken again, stopping first. The VM
    /// was paused so long for nothing (QEMU's own pause).
    Again { pause_ms: f64 },
}

/// How a pause ended, and what it left to undo.
struct Pause {
    outcome: Result<Paused>,
    /// The memory image was started (cancelled if the outcome is not [`Paused::Frozen`]).
    started: bool,
    /// The disk switched to the new layer (else the switch is undone).
    switched: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Paused {
    Frozen,
    WritesSeen,
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
        let uri = plan.stream.as_deref().map(memory::image_uri);
        // Tests that make the guest's writes seen need this way, whatever came before.
        let forced = failpoint::is_set("take.disk_check_late")
            || failpoint::is_set("take.disk_written_at_switch");
        let disk_after = match (&uri, self.run.as_mut()) {
            (Some(_), Some(run)) if plan.disk_after => run.freeze.disk_after() || forced,
            _ => false,
        };
        let pause = match &uri {
            Some(uri) if disk_after => self.freeze_after_qemu(&qmp, uri, &top_node, &plan).await,
            Some(uri) => self.freeze_stopped_first(&qmp, uri, &top_node, &plan).await,
            None => switch_live(&qmp, &top_node, &plan).await,
        };
        let pause_ms = memory::pause_from_events(&mut events);
        if !matches!(pause.outcome, Ok(Paused::Frozen)) {
            self.undo_pause(&qmp, &pause, &plan.new_top.node, &old_top)
                .await?;
        }
        match pause.outcome {
            Ok(Paused::Frozen) => {}
            Ok(Paused::WritesSeen) => {
                if let Some(run) = self.run.as_mut() {
                    run.freeze.writes_seen();
                }
                tracing::info!(pause_ms, "the guest wrote to its disk after QEMU's pause for the memory image; taking the snapshot again, stopping first");
                return Ok(Taken::Again { pause_ms });
            }
            Err(e) => return Err(e),
        }
        if let (true, Some(run)) = (disk_after, self.run.as_mut()) {
            run.freeze.frozen_after();
        }
        if plan.stream.is_some() {
            // The capability goes off once the snapshot is answered (see
            // [`Actor::background_snapshot_off`]).
            memory::wait_written(&qmp, &mut events).await?;
        }
        tracing::info!(pause_ms, disk_after, layer = %old_top.display(), "snapshot taken");
        Ok(Taken::Frozen { pause_ms })
    }

    /// Undoes what a pause that took nothing left: the memory image cancelled, the layer
    /// switch (if not made) undone.
    async fn undo_pause(
        &mut self,
        qmp: &Qmp,
        pause: &Pause,
        new_top_node: &str,
        old_top: &std::path::Path,
    ) -> Result<()> {
        if pause.started {
            memory::cancel(qmp).await;
        }
        if !pause.switched {
            self.dir.set_top_disk(old_top)?;
            let _ = qmp.blockdev_del(new_top_node).await;
        }
        let _ = memory::set_background(qmp, false).await;
        Ok(())
    }

    /// Stops the VM, then `migrate` to `uri` and `blockdev-snapshot` in one batch (QMP runs
    /// them in order), so that the pause is what QEMU needs rather than our round trips. `migrate` before `blockdev-snapshot`: QEMU runs that switch while its
    /// migration thread prepares RAM (see [`memory`]); both are as of our `stop`, since a VM
    /// we paused stays paused until our `cont`, which comes once RAM pages flow.
    async fn freeze_stopped_first(
        &self,
        qmp: &Qmp,
        uri: &str,
        top_node: &str,
        plan: &TakePlan,
    ) -> Pause {
        let mut migration_events = qmp.events();
        let t0 = Instant::now();
        let (stopped, started, switched) = tokio::join!(
            qmp.stop(),
            qmp.migrate(uri),
            qmp.blockdev_snapshot(top_node, &plan.new_top.node),
        );
        let sent = t0.elapsed();
        let (switched_ok, started_ok) = (switched.is_ok(), started.is_ok());
        let mut preparation = None;
        let frozen = match (stopped, switched, started) {
            (Ok(()), Ok(()), Ok(())) => memory::wait_flowing(qmp, &mut migration_events)
                .await
                .map(|p| preparation = p)
                .and_then(|()| failpoint::check("take.in_pause")),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => Err(Error::from(e)),
        };
        let flowing = t0.elapsed();
        let resumed = qmp.cont().await;
        release_chunker(plan);
        // `preparation`: QEMU touching RAM, `setup` to `active`, inside the pause.
        tracing::info!(?sent, ?preparation, ?flowing, resumed = ?t0.elapsed(), "snapshot pause, stopped first");
        Pause {
            outcome: resumed_after(frozen.map(|()| Paused::Frozen), resumed),
            started: started_ok,
            switched: switched_ok,
        }
    }

    /// Lets QEMU pause the running VM for the memory image itself, then freezes the disk
    /// while the VM runs, if the guest wrote nothing to it from before the `migrate` until
    /// after the switch (see [`memory::FreezeChoice`]): the frozen layer is then as of
    /// QEMU's pause, when the memory image was taken, and the pause is QEMU's alone. The
    /// writes are looked at before the switch too, so that a guest seen writing is left as
    /// it is; one that wrote during the switch is undone by merging the new layer back.
    async fn freeze_after_qemu(
        &mut self,
        qmp: &Qmp,
        uri: &str,
        top_node: &str,
        plan: &TakePlan,
    ) -> Pause {
        let mut migration_events = qmp.events();
        let mut io_errors = qmp.events();
        let t0 = Instant::now();
        let (before, started) = tokio::join!(qmp.guest_writes(DISK_DEVICE), qmp.migrate(uri));
        let failed = |e: Error, started, switched| Pause {
            outcome: Err(e),
            started,
            switched,
        };
        if let Err(e) = started {
            return failed(e.into(), false, false);
        }
        // Tests make the guest's writes land in the switch (`take.disk_written_at_switch`).
        let at_switch = failpoint::is_set("take.disk_written_at_switch");
        let checked = async {
            let before = before?;
            memory::wait_qemu_paused_and_resumed(qmp, &mut migration_events).await?;
            release_chunker(plan);
            if failpoint::is_set("take.disk_check_late") {
                // Tests widen the window in which the guest's writes are seen.
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            let quiet = at_switch || qmp.guest_writes(DISK_DEVICE).await? == before;
            Ok::<_, Error>((before, quiet))
        }
        .await;
        let before = match checked {
            Ok((before, true)) => before,
            Ok((_, false)) => {
                return Pause {
                    outcome: Ok(Paused::WritesSeen),
                    started: true,
                    switched: false,
                }
            }
            Err(e) => {
                // QEMU's thread may have left the VM paused: once it is gone, the VM runs.
                memory::cancel(qmp).await;
                release_chunker(plan);
                if qmp.query_status().await.is_ok_and(|s| s.status == "paused") {
                    let _ = qmp.cont().await;
                }
                return failed(e, true, false);
            }
        };
        let qemu_resumed = t0.elapsed();
        let switched = qmp.blockdev_snapshot(top_node, &plan.new_top.node).await;
        if at_switch {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let now = qmp.guest_writes(DISK_DEVICE).await;
        let io_error = memory::received(&mut io_errors).any(|e| e.name() == "BLOCK_IO_ERROR");
        let quiet = !io_error && now.as_ref().is_ok_and(|now| *now == before);
        tracing::info!(?qemu_resumed, switched = ?t0.elapsed(), quiet, "disk frozen after QEMU's pause");
        if let Err(e) = switched {
            return failed(e.into(), true, false);
        }
        if !quiet {
            // Some write may have reached the frozen layer after QEMU's pause.
            return match self.merge_back(qmp, &plan.new_top.node, top_node).await {
                Ok(()) => Pause {
                    outcome: Ok(Paused::WritesSeen),
                    started: true,
                    switched: false,
                },
                Err(e) => failed(e, true, true),
            };
        }
        let outcome = failpoint::check("take.in_pause").map(|()| Paused::Frozen);
        Pause {
            outcome,
            started: true,
            switched: true,
        }
    }

    /// Undoes a layer switch while the guest runs: the new layer `top` (maybe written to
    /// already) is merged into the one under it, `base`, which the guest then writes into
    /// again (QEMU's active commit; the new layer is nearly empty, so this is quick).
    async fn merge_back(&mut self, qmp: &Qmp, top: &str, base: &str) -> Result<()> {
        let job = format!(
            "merge-back-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        qmp.block_commit_active(&job, top, base).await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut completing = false;
        loop {
            let jobs = qmp.query_block_jobs().await?;
            match jobs.iter().find(|j| j.device == job) {
                None => break,
                Some(j) if j.io_status.as_deref().is_some_and(|s| s != "ok") => {
                    return Err(Error::QemuFailed(format!(
                        "merging the new disk layer back failed ({})",
                        j.io_status.as_deref().unwrap_or("")
                    )))
                }
                Some(j) if j.ready && !completing => {
                    qmp.job_complete(&job).await?;
                    completing = true;
                }
                Some(_) => {}
            }
            if tokio::time::Instant::now() > deadline {
                return Err(Error::Timeout(
                    "merging the new disk layer back took over a minute".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let now = qmp.top_node(DISK_DEVICE).await?;
        if now != base {
            return Err(Error::QemuFailed(format!(
                "after merging the new disk layer back, the disk writes into {now}, not {base}"
            )));
        }
        let _ = qmp.blockdev_del(top).await;
        Ok(())
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
        let started = Instant::now();
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

/// A disk-only snapshot of a running VM: the disk switched to the new layer while the guest
/// runs, no pause needed (`blockdev-snapshot` drains the old layer first, so it holds every
/// write that completed before the switch and none after: the disk as of that instant).
async fn switch_live(qmp: &Qmp, top_node: &str, plan: &TakePlan) -> Pause {
    let switched = qmp.blockdev_snapshot(top_node, &plan.new_top.node).await;
    let switched_ok = switched.is_ok();
    let outcome = switched
        .map_err(Error::from)
        .and_then(|()| failpoint::check("take.in_pause"))
        .map(|()| Paused::Frozen);
    Pause {
        outcome,
        started: false,
        switched: switched_ok,
    }
}

/// The chunker may start: the VM runs again.
fn release_chunker(plan: &TakePlan) {
    if let Some(release) = &plan.on_resume {
        release.release();
    }
}

/// A pause's outcome once the VM was resumed: a failed `cont` fails a pause that went well
/// (the VM would stay paused); after a failure, it is logged beside the first error.
fn resumed_after(
    outcome: Result<Paused>,
    resumed: std::result::Result<(), nimbus_qemu::QmpError>,
) -> Result<Paused> {
    match (outcome, resumed) {
        (outcome, Ok(())) => outcome,
        (Ok(_), Err(e)) => Err(e.into()),
        (Err(e), Err(cont)) => {
            tracing::error!(
                error = error_chain(&cont),
                "cannot resume the VM after a failed snapshot"
            );
            Err(e)
        }
    }
}
