//! The copy pass of snapshot replicas (issue 12; see [`crate::app::replica_copies`]): on
//! every controller, every few seconds,
//! - each replicated snapshot this controller is not recorded as holding: if its replica is
//!   complete here (kept from an earlier run), recorded; otherwise copied from a live holder;
//! - once a snapshot is gone, this controller's replica store is swept (what no remaining
//!   replica uses goes);
//! - holder rows of controllers or snapshots that are gone are forgotten.
//!
//! So once a pass ran after a replication, every live controller can restart the instance
//! from it, and the controller that received it from the host can die without losing it.

use crate::app::App;
use crate::background::task::{PassError, Run, Task};
use std::collections::BTreeSet;
use std::time::Duration;
use uuid::Uuid;

/// Time between two passes.
const INTERVAL: Duration = Duration::from_secs(3);

/// The copy pass; remembers the snapshots it saw, to sweep when one is gone.
#[derive(Default)]
pub struct ReplicaCopies {
    known: Option<BTreeSet<Uuid>>,
}

#[async_trait::async_trait]
impl Task for ReplicaCopies {
    const NAME: &'static str = "replica_copies";
    const RUN: Run = Run::EveryController;

    fn interval(&self, _app: &App) -> Duration {
        INTERVAL
    }

    async fn pass(&mut self, app: &App) -> Result<(), PassError> {
        let live: BTreeSet<Uuid> = app.store().all_snapshot_ids().await?.into_iter().collect();
        if self.known.as_ref().is_none_or(|k| !k.is_subset(&live)) {
            // The snapshots are read again under the store's lock (see `ReplicaStore::sweep`).
            let store = app.store();
            let read = async { store.all_snapshot_ids().await.ok().map(BTreeSet::from_iter) };
            match app.replicas().sweep(read).await {
                Ok(freed) if freed > 0 => {
                    tracing::info!(freed, "replicas of deleted snapshots collected")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "sweeping the replica store failed"),
            }
        }
        self.known = Some(live);
        let me = app.controller_id();
        for (vm, sid) in app.store().replicas_missing_on(me).await? {
            if app.holds_replica(vm, sid) {
                app.store().add_replica_holder(sid, me).await?;
                continue;
            }
            // The error is logged once here; the next pass tries again.
            if let Err(e) = app.ensure_replica(vm, sid).await {
                tracing::warn!(instance_id = %vm, snapshot_id = %sid, error = %e.message,
                    "snapshot replica not copied here yet");
            }
        }
        let forgotten = app.store().forget_gone_replica_holders().await?;
        if forgotten > 0 {
            tracing::debug!(
                forgotten,
                "replica holders of gone controllers or snapshots forgotten"
            );
        }
        Ok(())
    }
}
