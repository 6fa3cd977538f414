//! The actor's side of checkpoints: what must happen to the running QEMU. The files
//! (manifests, chunks, layers) are handled by [`crate::snapshot`].

use super::freeze::{self, Pause, Paused};
use super::{block_job, Actor};
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
        refuse_unless_qemu_runs(&qmp).await?;
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
            Some(uri) if disk_after => freeze::after_qemu(&qmp, uri, &top_node, &plan).await,
            Some(uri) => freeze::stopped_first(&qmp, uri, &top_node, &plan).await,
            None => freeze::switch_live(&qmp, &top_node, &plan).await,
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

    /// Undoes what a freeze that took nothing left: the layer switch (if not made) undone,
    /// the memory image cancelled.
    async fn undo_pause(
        &mut self,
        qmp: &Qmp,
        pause: &Pause,
        new_top_node: &str,
        old_top: &std::path::Path,
    ) -> Result<()> {
        // The link first: a crash while the image is cancelled must find the layer the
        // guest writes into.
        let relinked = match pause.switched {
            true => Ok(()),
            false => self.dir.set_top_disk(old_top),
        };
        if !pause.switched {
            let _ = qmp.blockdev_del(new_top_node).await;
        }
        if pause.started {
            memory::cancel(qmp).await;
        }
        let _ = memory::set_background(qmp, false).await;
        relinked
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
        let job = block_job::new_id("stream");
        qmp.block_stream(&job, &node, base.as_deref(), plan.base.as_deref())
            .await?;
        let hour = Duration::from_secs(3600);
        block_job::run(
            &qmp,
            &job,
            block_job::Ends::Itself,
            hour,
            "merging disk layers",
        )
        .await?;
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

/// Refuses a snapshot of a VM that QEMU itself holds stopped (the agent sees it running):
/// after a disk write failed (`io-error`, e.g. the host's disk is full) QEMU stops the VM to
/// retry the write once resumed; a snapshot must neither resume it nor wait for it.
async fn refuse_unless_qemu_runs(qmp: &Qmp) -> Result<()> {
    let status = qmp.query_status().await?.status;
    match status.as_str() {
        "running" => Ok(()),
        "io-error" => Err(Error::Conflict(
            "QEMU stopped the VM after a write to its disk failed (is the host's disk full?); \
             free space on the host, stop and start the instance, then take the snapshot"
                .into(),
        )),
        _ => Err(Error::Conflict(format!(
            "QEMU reports the VM {status}, not running; a snapshot needs it running"
        ))),
    }
}
