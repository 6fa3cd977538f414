//! The steps of a cold migration (see [`super::instance_cold_migrate`]).

use super::migrate_steps::{commit_move, disk_transfer, route, PrepareTarget};
use super::snapshot_move::{copied_bytes, SnapshotMove};
use super::steps::{agent_err, app_err, instance};
use crate::app::App;
use async_trait::async_trait;
use nimbus_agent_api::{ColdIncomingRequest, DiskTransfer, SnapshotSetPart};
use nimbus_api::MigrationStats;
use nimbus_ops::{Step, StepContext, StepError};
use serde_json::{json, Value};
use uuid::Uuid;

/// Defines the stopped instance on the target with its disk: a link to the shared disk, or
/// a fresh overlay on the same base image that [`CopyDisk`] fills.
pub struct PrepareColdTarget(pub Uuid);

#[async_trait]
impl Step<App> for PrepareColdTarget {
    fn name(&self) -> &'static str {
        "prepare_cold_target"
    }

    async fn action(&self, app: &App, s: &StepContext<'_>) -> Result<Value, StepError> {
        let r = route(s)?;
        let inst = instance(app, self.0).await?;
        let spec = app.vm_spec(&inst).await.map_err(app_err)?;
        let (disk, kind, dst_host) = disk_transfer(app, self.0, &r).await?;
        let kind = if matches!(disk, DiskTransfer::Mirror) {
            "copy"
        } else {
            kind
        };
        let snapshots = SnapshotMove {
            instance: self.0,
            source: r.source.clone(),
            target: r.target.clone(),
            shared: kind == "shared",
            live: false,
        }
        .copy(app, Some(s), SnapshotSetPart::All)
        .await?;
        app.agent(&dst_host.agent_url)
            .cold_incoming(&ColdIncomingRequest { spec, disk })
            .await
            .map_err(agent_err)?;
        Ok(json!({ "disk_transfer": kind, "snapshots": snapshots }))
    }

    /// Deletes the target copy, as a live migration's target is (a shared disk stays).
    async fn undo(&self, app: &App, s: &StepContext<'_>) -> Result<(), StepError> {
        PrepareTarget(self.0).undo(app, s).await
    }
}

/// Streams the source's disk into the target's copy (through the controller, which both
/// agents trust), checked there against its digest. Nothing to do on shared storage.
pub struct CopyDisk(pub Uuid);

#[async_trait]
impl Step<App> for CopyDisk {
    fn name(&self) -> &'static str {
        "copy_disk"
    }

    async fn action(&self, app: &App, s: &StepContext<'_>) -> Result<Value, StepError> {
        let r = route(s)?;
        let snapshots = s
            .output("prepare_cold_target")
            .and_then(|o| o.get("snapshots"));
        if r.shared() {
            return Ok(json!({ "bytes": copied_bytes(snapshots) }));
        }
        if snapshots.is_some_and(|v| !v.is_null()) {
            // The disk is a chain of layers: every one of them came with the snapshots.
            return Ok(json!({ "bytes": copied_bytes(snapshots) }));
        }
        let source = app.agent_of(&r.source).await.map_err(app_err)?;
        let target = app.agent_of(&r.target).await.map_err(app_err)?;
        let (disk, digest) = source.export_disk(self.0).await.map_err(agent_err)?;
        let bytes = disk.content_length().unwrap_or(0);
        s.progress(&format!(
            "copying the disk: {:.1} MiB from {} to {}",
            bytes as f64 / 1048576.0,
            r.source,
            r.target
        ))
        .await;
        let body = reqwest::Body::wrap_stream(disk.bytes_stream());
        target
            .import_disk(self.0, body, &digest)
            .await
            .map_err(agent_err)?;
        Ok(json!({ "bytes": bytes }))
    }
}

/// Moves the instance to the target in the store. The point of no return.
pub struct CommitCold(pub Uuid);

#[async_trait]
impl Step<App> for CommitCold {
    fn name(&self) -> &'static str {
        "commit_cold"
    }

    async fn action(&self, app: &App, s: &StepContext<'_>) -> Result<Value, StepError> {
        let r = route(s)?;
        let bytes = s
            .output("copy_disk")
            .and_then(|o| o.get("bytes"))
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let stats = commit_move(app, s.operation_id, self.0, &r, |total_ms| MigrationStats {
            disk_transfer: if r.shared() { "shared" } else { "copy" }.into(),
            transferred_bytes: bytes,
            total_bytes: bytes,
            total_ms,
            ..MigrationStats::default()
        })
        .await?;
        tracing::info!(instance_id = %self.0, source = %r.source, target = %r.target, bytes, "cold migration committed");
        Ok(json!({ "stats": stats }))
    }

    fn is_point_of_no_return(&self, _output: &Value) -> bool {
        true
    }
}
