//! Source side: the task that sends a VM to a prepared target, owned by the VM's actor
//! (which keeps answering status, stop and delete meanwhile).
//!
//! ```text
//! setup ──▶ mirroring_disk ──▶ pre_copy ──────────────────────────────▶ completed
//!  tunnel,   [nbd target]       migrate; poll query-migrate every        stats re-read
//!  caps,     blockdev-mirror    150 ms (and at each MIGRATION event);     after the
//!  params    until ready        escalate (policy.rs); at pre-switchover   MIGRATION event
//!  (tls.rs)                     complete the mirror, migrate-continue
//!                                  └──▶ post_copy (policy) ──────────────▶ completed
//! any step ──▶ failed | cancelled: migrate_cancel, force-cancel the mirror, remove the NBD
//!              node, `cont` if QEMU was left paused: the VM keeps running here.
//! ```
//! Progress is published on a watch channel the VM handle reads, and persisted (role.rs) at
//! every phase change and escalation. A task started for a migration found in flight after
//! an agent restart (`resume`) skips the setup and follows QEMU from where it is.

mod transfer;

use super::role::OutgoingRecord;
use super::tls::MigrationTls;
use crate::instance::files::VmDir;
use crate::instance::heartbeat::LastBeat;
use nimbus_agent_api::MigrationProgress;
use nimbus_qemu::Qmp;
use std::sync::Arc;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;
use transfer::Transfer;
use uuid::Uuid;

/// How a migration ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The target has the VM; QEMU here is paused (`postmigrate`).
    Completed,
    /// The VM keeps running here; the reason.
    Failed(String),
    /// Cancelled on request; the VM keeps running here.
    Cancelled,
}

/// What the task works with.
pub struct Context {
    pub id: Uuid,
    pub qmp: Qmp,
    pub dir: VmDir,
    pub progress: Arc<watch::Sender<MigrationProgress>>,
    pub last_beat: Arc<LastBeat>,
    pub record: OutgoingRecord,
    /// How the stream and the disk mirror are secured.
    pub tls: MigrationTls,
    /// Called once, when the guest stops for the switch-over (its network moves then).
    pub on_switch_over: Option<Box<dyn FnOnce() + Send + Sync>>,
}

/// A running outgoing migration. Dropping it aborts the task (QEMU goes on migrating).
pub struct OutgoingTask {
    task: JoinHandle<()>,
    cancel: watch::Sender<bool>,
    done: oneshot::Receiver<Outcome>,
}

impl OutgoingTask {
    /// Starts the task; `resume` follows a migration already in flight.
    pub fn spawn(ctx: Context, resume: bool) -> Self {
        let (cancel, cancel_rx) = watch::channel(false);
        let (done_tx, done) = oneshot::channel();
        let span = tracing::info_span!("migration_out", instance_id = %ctx.id);
        let task = tokio::spawn(
            async move {
                let outcome = Transfer::new(ctx, cancel_rx).run(resume).await;
                let _ = done_tx.send(outcome);
            }
            .instrument(span),
        );
        Self { task, cancel, done }
    }

    /// Asks the task to cancel the migration (it answers through [`Self::finished`]).
    pub fn cancel(&self) {
        self.cancel.send_replace(true);
    }

    /// Waits for the outcome. Call once; cancel-safe.
    pub async fn finished(&mut self) -> Outcome {
        (&mut self.done).await.unwrap_or_else(|_| {
            Outcome::Failed("the migration task ended without an outcome".into())
        })
    }
}

impl Drop for OutgoingTask {
    fn drop(&mut self) {
        self.task.abort();
    }
}
