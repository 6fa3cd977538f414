//! The manager's checkpoint entry points: snapshots of its VMs and clones from them.

use super::{validate, Manager};
use crate::error::{Error, Result};
use crate::instance::files::VmDir;
use crate::instance::state::CoreStatus;
use crate::instance::{ActorSetup, RestorePlan, VmHandle};
use crate::snapshot::restore::{self, NewIdentity};
use crate::snapshot::{clone, delete, take};
use nimbus_agent_api::{
    CloneRequest, DeleteSnapshotResult, RestoreRequest, RestoreResult, SnapshotRequest,
    SnapshotResult, VmRunState, VmStatus,
};
use std::time::Instant;
use uuid::Uuid;

impl Manager {
    /// Takes a snapshot of VM `id`.
    pub async fn snapshot(
        &self,
        id: Uuid,
        req: &SnapshotRequest,
        qemu_version: &str,
    ) -> Result<SnapshotResult> {
        let vm = self.get(id)?;
        take::take(&vm, &self.snapshots, qemu_version, req).await
    }

    /// Restores VM `id` to its snapshot `sid`.
    pub async fn restore(
        &self,
        id: Uuid,
        sid: Uuid,
        req: &RestoreRequest,
    ) -> Result<RestoreResult> {
        let vm = self.get(id)?;
        restore::restore(&vm, &self.snapshots, sid, req).await
    }

    /// Deletes snapshot `sid` of VM `id`.
    pub async fn delete_snapshot(&self, id: Uuid, sid: Uuid) -> Result<DeleteSnapshotResult> {
        let vm = self.get(id)?;
        delete::delete(&vm, &self.snapshots, sid).await
    }

    /// Defines and runs a new VM resumed from another VM's snapshot. Idempotent while the
    /// clone runs; on failure nothing of the clone is left.
    pub async fn clone_vm(&self, req: &CloneRequest) -> Result<VmStatus> {
        let started = Instant::now();
        let id = req.spec.id;
        validate(id, &req.spec)?;
        if let Ok(existing) = self.get(id) {
            let s = existing.status();
            if existing.spec() == &req.spec && s.state == VmRunState::Running {
                return Ok(s);
            }
            return Err(Error::Conflict(format!(
                "VM {id} already exists on this host"
            )));
        }
        let source = self.get(req.source_vm)?;
        let m = restore::load_manifest(source.dir(), req.snapshot_id)?;
        clone::check_compatible(&req.spec, &m)?;
        let vm = match self.define_clone(req, &m).await {
            Ok(vm) => vm,
            Err(e) => {
                let _ = self.remove(id, false).await;
                return Err(e);
            }
        };
        let first_heartbeat_ms = restore::wait_heartbeat(&vm, started).await;
        if m.memory.is_some() {
            let nic = req.spec.nics.first();
            let identity = NewIdentity {
                hostname: &crate::instance::launch::hostname(&req.spec.name),
                mac: nic.map(|n| n.mac.as_str()),
                ip: nic.map(|n| n.ip.as_str()),
                gateway: nic.and_then(|n| n.gateway.as_deref()),
                cloned_from: req.source_vm,
            };
            restore::bring_to_present(&vm, true, Some(identity)).await;
        }
        tracing::info!(instance_id = %id, source = %req.source_vm, snapshot_id = %req.snapshot_id, ?first_heartbeat_ms, "clone running");
        Ok(vm.status())
    }

    async fn define_clone(
        &self,
        req: &CloneRequest,
        m: &crate::snapshot::manifest::Manifest,
    ) -> Result<std::sync::Arc<VmHandle>> {
        let id = req.spec.id;
        crate::instance::disk::check_image(&req.spec)?;
        let dir = VmDir::new(self.vms_dir.join(id.to_string()));
        std::fs::create_dir_all(dir.dir()).map_err(Error::io("create", dir.dir()))?;
        let stream = dir.dir().join("clone.stream");
        restore::prepare(&self.snapshots, m, &stream).await?;
        let cached = self.cached_image(&req.spec).await?;
        let base = cached.as_ref().map(|l| l.path.as_path());
        clone::copy_disk(m, &dir, &req.spec, base).await?;
        let status = CoreStatus::defined();
        dir.write_state(&status)?;
        dir.write_spec(&req.spec)?;
        let (vm, _ready) = VmHandle::spawn(ActorSetup {
            id,
            spec: req.spec.clone(),
            dir: dir.clone(),
            accel: self.accel,
            network: self.network.clone(),
            status,
            adopt: None,
            migration_tls: self.migration_tls.clone(),
        });
        self.lock().insert(id, vm.clone());
        let plan = RestorePlan {
            top: dir.disk(),
            stream: m.memory.as_ref().map(|_| stream.clone()),
        };
        let restored = vm.restore(plan).await;
        let _ = std::fs::remove_file(&stream);
        restored?;
        Ok(vm)
    }
}
