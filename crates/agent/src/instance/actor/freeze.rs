//! A snapshot's instant: the disk frozen under a new layer and, with memory, QEMU's
//! background snapshot started, as of one instant of the guest (see
//! [`memory::FreezeChoice`] for the two ways). The actor's [`super::snapshot`] prepares and
//! undoes; these functions only talk to QEMU.

use super::block_job;
use super::snapshot::TakePlan;
use crate::error::{error_chain, Error, Result};
use crate::migration::disk_mirror::DISK_DEVICE;
use crate::snapshot::{failpoint, memory};
use nimbus_qemu::{Qmp, QmpError};
use std::time::{Duration, Instant};

/// How a freeze ended, and what it left to undo.
pub(super) struct Pause {
    pub outcome: Result<Paused>,
    /// The memory image was (or may have been) started: cancelled unless
    /// [`Paused::Frozen`].
    pub started: bool,
    /// The disk switched to the new layer (or may have: only a switch QEMU shows not made
    /// is undone; a new layer kept in doubt is empty, the same disk).
    pub switched: bool,
}

/// What a freeze that did not fail took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Paused {
    /// The disk is frozen, and the memory image (if any) is being written.
    Frozen,
    /// The guest wrote to its disk after QEMU's pause: nothing is kept.
    WritesSeen,
}

/// Stops the VM, then `migrate` to `uri` and `blockdev-snapshot` in one batch (QMP runs
/// them in order), so that the pause is what QEMU needs rather than our round trips.
/// `migrate` before `blockdev-snapshot`: QEMU runs that switch while its migration thread
/// prepares RAM (see [`memory`]); both are as of our `stop`, since a VM we paused stays
/// paused until our `cont`, which comes once RAM pages flow.
pub(super) async fn stopped_first(qmp: &Qmp, uri: &str, top_node: &str, plan: &TakePlan) -> Pause {
    let mut migration_events = qmp.events();
    let t0 = Instant::now();
    let (stopped, started, switched) = tokio::join!(
        qmp.stop(),
        qmp.migrate(uri),
        qmp.blockdev_snapshot(top_node, &plan.new_top.node),
    );
    let sent = t0.elapsed();
    let switched_ok = switched_to_new_layer(qmp, &switched, top_node).await;
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
        // A `migrate` not answered may have started all the same.
        started: true,
        switched: switched_ok,
    }
}

/// Lets QEMU pause the running VM for the memory image itself, then freezes the disk while
/// the VM runs, if the guest wrote nothing to it from before the `migrate` until after the
/// switch (see [`memory::FreezeChoice`]): the frozen layer is then as of QEMU's pause, when
/// the memory image was taken, and the pause is QEMU's alone. The writes are looked at
/// before the switch too, so that a guest seen writing is left as it is; one that wrote
/// during the switch is undone by merging the new layer back ([`merge_back`]).
pub(super) async fn after_qemu(qmp: &Qmp, uri: &str, top_node: &str, plan: &TakePlan) -> Pause {
    let mut migration_events = qmp.events();
    let mut io_errors = qmp.events();
    let t0 = Instant::now();
    let (before, started) = tokio::join!(qmp.guest_writes(DISK_DEVICE), qmp.migrate(uri));
    // Tests make the guest's writes land in the switch (`take.disk_written_at_switch`).
    let at_switch = failpoint::is_set("take.disk_written_at_switch");
    let checked = async {
        started?;
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
    let not_switched = |outcome| Pause {
        outcome,
        started: true,
        switched: false,
    };
    let before = match checked {
        Ok((before, true)) => before,
        Ok((_, false)) => return not_switched(Ok(Paused::WritesSeen)),
        Err(e) => {
            // QEMU's thread may have left the VM paused: once it is gone, the VM runs.
            memory::cancel(qmp).await;
            release_chunker(plan);
            if qmp.query_status().await.is_ok_and(|s| s.status == "paused") {
                let _ = qmp.cont().await;
            }
            // Cancelled already: nothing more for the undo to cancel.
            return Pause {
                outcome: Err(e),
                started: false,
                switched: false,
            };
        }
    };
    let qemu_resumed = t0.elapsed();
    let answer = qmp.blockdev_snapshot(top_node, &plan.new_top.node).await;
    let switched = switched_to_new_layer(qmp, &answer, top_node).await;
    if at_switch {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let (now, status) = tokio::join!(qmp.guest_writes(DISK_DEVICE), qmp.query_status());
    // A write that failed for want of space stops the VM and is not counted (QEMU keeps it
    // to retry): the VM must still run, and no I/O error have come.
    let io_error = memory::received(&mut io_errors).any(|e| e.name() == "BLOCK_IO_ERROR")
        || !status.is_ok_and(|s| s.status == "running");
    let quiet = !io_error && now.is_ok_and(|now| now == before);
    tracing::info!(?qemu_resumed, switched = ?t0.elapsed(), quiet, "disk frozen after QEMU's pause");
    if let Err(e) = answer {
        return Pause {
            outcome: Err(e.into()),
            started: true,
            switched,
        };
    }
    if !quiet {
        // Some write may have reached the frozen layer after QEMU's pause.
        let (undone, merged) = merge_back(qmp, &plan.new_top.node, top_node).await;
        return Pause {
            outcome: merged.map(|()| Paused::WritesSeen),
            started: true,
            switched: !undone,
        };
    }
    Pause {
        outcome: failpoint::check("take.in_pause").map(|()| Paused::Frozen),
        started: true,
        switched: true,
    }
}

/// A disk-only snapshot of a running VM: the disk switched to the new layer while the guest
/// runs, no pause needed (`blockdev-snapshot` drains the old layer first, so it holds every
/// write that completed before the switch and none after: the disk as of that instant).
pub(super) async fn switch_live(qmp: &Qmp, top_node: &str, plan: &TakePlan) -> Pause {
    let answer = qmp.blockdev_snapshot(top_node, &plan.new_top.node).await;
    let switched = switched_to_new_layer(qmp, &answer, top_node).await;
    let outcome = answer
        .map_err(Error::from)
        .and_then(|()| failpoint::check("take.in_pause"))
        .map(|()| Paused::Frozen);
    Pause {
        outcome,
        started: false,
        switched,
    }
}

/// Whether the guest's disk now writes into the new layer, after `blockdev-snapshot`
/// answered `answer`: a failed answer (a timeout, QEMU busy draining the guest's I/O) does
/// not prove the switch was not made, so QEMU is asked. Not switched only when QEMU shows
/// the device still on `old_node`.
async fn switched_to_new_layer(
    qmp: &Qmp,
    answer: &std::result::Result<(), QmpError>,
    old_node: &str,
) -> bool {
    answer.is_ok() || !qmp.top_node(DISK_DEVICE).await.is_ok_and(|n| n == old_node)
}

/// Undoes a layer switch while the guest runs: the new layer `top` (maybe written to
/// already) is merged into the one under it, `base`, which the guest then writes into again
/// (QEMU's active commit; the new layer is nearly empty, so this is quick). Answers whether
/// the guest's disk writes into `base` again (also when a step failed: a job that failed is
/// cancelled, so that it cannot switch the disk later), and how the merge went.
async fn merge_back(qmp: &Qmp, top: &str, base: &str) -> (bool, Result<()>) {
    let job = block_job::new_id("merge-back");
    let ran = async {
        qmp.block_commit_active(&job, top, base).await?;
        let what = "merging the new disk layer back";
        block_job::run(
            qmp,
            &job,
            block_job::Ends::Completed,
            Duration::from_secs(60),
            what,
        )
        .await
    }
    .await;
    if ran.is_err() {
        let _ = qmp.block_job_cancel(&job, true).await;
    }
    let live = qmp.top_node(DISK_DEVICE).await;
    // The undo of a switch not made removes the node `top` (see `Actor::undo_pause`).
    let undone = matches!(&live, Ok(node) if node == base);
    let merged = match (ran, live) {
        (Err(e), _) => Err(e),
        (Ok(()), Err(e)) => Err(e.into()),
        (Ok(()), Ok(_)) if !undone => Err(Error::QemuFailed(
            "merging the new disk layer back did not make the guest write into the old one".into(),
        )),
        (Ok(()), Ok(_)) => Ok(()),
    };
    (undone, merged)
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
    resumed: std::result::Result<(), QmpError>,
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
