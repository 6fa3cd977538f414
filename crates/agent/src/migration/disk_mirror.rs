//! Copying a local disk to the target while the VM runs (block migration).
//!
//! The target serves its fresh overlay (same base image, same virtual size) over NBD, the
//! agents carrying the connection over TLS (see [`super::tls`]). The source adds an NBD
//! client node for it and runs `blockdev-mirror` of its disk into it:
//! - `sync: top` copies only the overlay's own clusters: both overlays share the read-only
//!   base image, which the target reads through its own overlay;
//! - `copy-mode: write-blocking` makes every guest write reach the target before it
//!   completes once the job is ready, so the backlog at switch-over stays near zero.
//!
//! The job is *completed* (a ready mirror cancelled without force makes a last pass and
//! ends with `BLOCK_JOB_COMPLETED`) while the guest is stopped at `pre-switchover` and
//! before the target resumes, so the target starts on an exact copy.

use super::tls::DiskRoute;
use super::MigrationError;
use nimbus_qemu::qmp::{BlockJobInfo, EventKind};
use nimbus_qemu::{Qmp, QmpEvent};
use std::time::Duration;
use tokio::sync::broadcast;
use tokio::time::Instant;
use uuid::Uuid;

/// Node name of the instance disk's format layer (see [`crate::instance::launch`]).
pub const DISK_NODE: &str = "disk0";
/// qdev id of the instance disk's device.
pub const DISK_DEVICE: &str = "vda";
/// Node name of the NBD client of the target's export, on the source.
pub const NBD_NODE: &str = "migration-nbd";
/// How long a force-cancelled job may take to go away.
const ABORT_LIMIT: Duration = Duration::from_secs(10);

/// The mirror job of one VM (and, when tunnelled, the tunnel its NBD client uses: closed
/// when this is dropped).
pub struct DiskMirror {
    qmp: Qmp,
    job: String,
    _route: Option<DiskRoute>,
}

/// Job id of the disk mirror of VM `id`.
pub fn job_id(id: Uuid) -> String {
    format!("mirror-{id}")
}

impl DiskMirror {
    /// Connects to the target's export by `route` and starts mirroring into it.
    pub async fn start(qmp: &Qmp, id: Uuid, route: DiskRoute) -> Result<Self, MigrationError> {
        qmp.blockdev_add_nbd(NBD_NODE, route.address(), route.export())
            .await
            .map_err(MigrationError::qmp(
                "blockdev-add of the target's NBD export",
            ))?;
        let mirror = Self {
            _route: Some(route),
            ..Self::adopt(qmp, id)
        };
        // The guest's top layer: `disk0` until a snapshot put a layer on it (its layers below
        // are on the target already, moved with the snapshots).
        let source = match qmp.top_node(DISK_DEVICE).await {
            Ok(node) => node,
            Err(e) => {
                let _ = qmp.blockdev_del(NBD_NODE).await;
                return Err(MigrationError::qmp("query-block")(e));
            }
        };
        if let Err(e) = qmp
            .blockdev_mirror(&mirror.job, &source, NBD_NODE, "top", true)
            .await
        {
            let _ = qmp.blockdev_del(NBD_NODE).await;
            return Err(MigrationError::qmp("blockdev-mirror")(e));
        }
        Ok(mirror)
    }

    /// The mirror of a migration already in flight (agent restart): the job may or may not
    /// still exist.
    pub fn adopt(qmp: &Qmp, id: Uuid) -> Self {
        Self {
            qmp: qmp.clone(),
            job: job_id(id),
            _route: None,
        }
    }

    /// The job as QEMU reports it now; `None` once it has ended.
    pub async fn job(&self) -> Result<Option<BlockJobInfo>, MigrationError> {
        let jobs = self
            .qmp
            .query_block_jobs()
            .await
            .map_err(MigrationError::qmp("query-block-jobs"))?;
        Ok(jobs.into_iter().find(|j| j.device == self.job))
    }

    /// Completes the ready mirror (the guest must be stopped) and removes the NBD node. The
    /// last pass of a ready, write-blocking mirror has next to nothing to copy: one that
    /// takes longer than `limit` (the migration's stall bound) has stalled.
    pub async fn complete(&self, limit: Duration) -> Result<(), MigrationError> {
        let mut events = self.qmp.events();
        match self.job().await? {
            Some(job) if job.ready => {}
            Some(job) => {
                return Err(MigrationError::Mirror(format!(
                    "not in sync at switch-over ({} bytes left, status {})",
                    job.remaining(),
                    job.status
                )))
            }
            None => return Err(MigrationError::Mirror("the job ended early".into())),
        }
        self.qmp
            .block_job_cancel(&self.job, false)
            .await
            .map_err(MigrationError::qmp(
                "block-job-cancel (completing the mirror)",
            ))?;
        match self.wait_gone(&mut events, limit).await? {
            Some(JobEnd {
                error: Some(error), ..
            }) => {
                return Err(MigrationError::Mirror(format!("last pass failed: {error}")));
            }
            Some(JobEnd {
                cancelled: true, ..
            }) => {
                return Err(MigrationError::Mirror(
                    "the job was cancelled instead of completed".into(),
                ));
            }
            _ => {}
        }
        self.qmp
            .blockdev_del(NBD_NODE)
            .await
            .map_err(MigrationError::qmp("blockdev-del of the NBD node"))
    }

    /// Abandons the mirror (failure or cancel): ends the job at once and removes the NBD
    /// node. Best effort: what is already gone is fine.
    pub async fn abort(&self) {
        let mut events = self.qmp.events();
        if let Ok(Some(_)) = self.job().await {
            if let Err(e) = self.qmp.block_job_cancel(&self.job, true).await {
                tracing::warn!(job = self.job, error = %e, "cannot cancel the disk mirror");
            }
            if let Err(e) = self.wait_gone(&mut events, ABORT_LIMIT).await {
                tracing::warn!(job = self.job, error = %e, "disk mirror did not end");
            }
        }
        if let Err(e) = self.qmp.blockdev_del(NBD_NODE).await {
            tracing::debug!(error = %e, "no NBD node to remove");
        }
    }

    /// Waits until the job is gone; returns how it ended if its event was seen.
    async fn wait_gone(
        &self,
        events: &mut broadcast::Receiver<QmpEvent>,
        limit: Duration,
    ) -> Result<Option<JobEnd>, MigrationError> {
        let deadline = Instant::now() + limit;
        let mut end = None;
        loop {
            while let Ok(ev) = events.try_recv() {
                if let Some(e) = JobEnd::of(&ev, &self.job) {
                    end = Some(e);
                }
            }
            if end.is_some() || self.job().await?.is_none() {
                return Ok(end);
            }
            if Instant::now() >= deadline {
                return Err(MigrationError::Mirror(format!(
                    "job {} did not end within {limit:?}",
                    self.job
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// The end of a block job, from its `BLOCK_JOB_COMPLETED`/`BLOCK_JOB_CANCELLED` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobEnd {
    pub cancelled: bool,
    pub error: Option<String>,
}

impl JobEnd {
    /// The end of job `job` if `ev` reports it.
    pub fn of(ev: &QmpEvent, job: &str) -> Option<Self> {
        let EventKind::Other { name, data } = &ev.kind else {
            return None;
        };
        let cancelled = match name.as_str() {
            "BLOCK_JOB_COMPLETED" => false,
            "BLOCK_JOB_CANCELLED" => true,
            _ => return None,
        };
        if data.get("device").and_then(|d| d.as_str()) != Some(job) {
            return None;
        }
        let error = data
            .get("error")
            .and_then(|e| e.as_str())
            .map(str::to_string);
        Some(Self { cancelled, error })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn job_end_events() {
        let ev = |v| QmpEvent::from_json(&v).expect("event");
        let done = ev(json!({"event": "BLOCK_JOB_COMPLETED", "timestamp": {},
            "data": {"device": "mirror-a", "len": 1, "offset": 1, "type": "mirror"}}));
        assert_eq!(
            JobEnd::of(&done, "mirror-a"),
            Some(JobEnd {
                cancelled: false,
                error: None
            })
        );
        assert_eq!(JobEnd::of(&done, "mirror-b"), None);
        let failed = ev(json!({"event": "BLOCK_JOB_COMPLETED", "timestamp": {},
            "data": {"device": "mirror-a", "error": "Input/output error"}}));
        assert_eq!(
            JobEnd::of(&failed, "mirror-a").and_then(|e| e.error),
            Some("Input/output error".into())
        );
    }

    #[test]
    fn the_mirrored_node_is_the_launched_disk() {
        let spec: nimbus_agent_api::VmSpec = serde_json::from_value(json!({
            "id": Uuid::nil(), "name": "m", "vcpus": 1, "memory_mib": 64,
            "image": {"name": "i", "kernel": "/k", "initrd": null, "cmdline": null,
                      "base_disk": null, "ready_marker": null},
            "disk": {"size_gib": 1}
        }))
        .expect("spec");
        let dir = crate::instance::files::VmDir::new("/s/vms/1".into());
        let config = crate::instance::launch::qemu_config(&spec, &dir, nimbus_qemu::Accel::Tcg);
        assert_eq!(config.disks[0].node, DISK_NODE);
    }
}
