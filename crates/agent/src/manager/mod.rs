//! The instance manager: the VMs of this host, by id, each run by its own actor.
//!
//! At start it scans `<state_dir>/vms/<id>/` and re-adopts every VM whose QEMU is alive;
//! a VM whose QEMU is gone is `stopped` or `crashed` (see [`state::after_agent_restart`]).
//! Disks are created where the host keeps them ([`DiskStore`]: the VM directory, or shared
//! storage linked from it).

mod snapshot_move;
mod snapshots;

use crate::error::{Error, Result};
use crate::image_cache::{ImageCache, Lease};
use crate::instance::files::VmDir;
use crate::instance::state::{self, CoreStatus};
use crate::instance::{disk, ActorSetup, VmHandle};
use crate::migration::incoming::{self, IncomingPlan};
use crate::migration::role::{self, IncomingRecord, MigrationRole};
use crate::migration::tls::MigrationTls;
use crate::network::{guest, HostNetwork};
use crate::snapshot::SnapshotStore;
use crate::storage::DiskStore;
use nimbus_agent_api::{
    ColdIncomingRequest, DiskTransfer, IncomingReady, IncomingRequest, VmSpec, VmStatus,
};
use nimbus_image::Digest;
use nimbus_qemu::{Accel, QemuProcess};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use uuid::Uuid;

/// The VMs of this host.
pub struct Manager {
    vms_dir: PathBuf,
    accel: Accel,
    /// Where instance disks are created.
    store: DiskStore,
    vms: Mutex<HashMap<Uuid, Arc<VmHandle>>>,
    /// The host's side of the cloud network (the VMs' taps).
    network: Arc<HostNetwork>,
    /// Serializes define and delete (disk creation, directory removal).
    lifecycle: tokio::sync::Mutex<()>,
    /// The host's snapshots (memory chunks shared by all VMs).
    snapshots: SnapshotStore,
    /// Uploaded images fetched from the controller.
    images: Arc<ImageCache>,
    /// How live migrations are secured.
    migration_tls: MigrationTls,
}

impl Manager {
    /// Loads every VM under `<state_dir>/vms`, adopting the running ones.
    pub async fn load(
        state_dir: &Path,
        accel: Accel,
        store: DiskStore,
        network: Arc<HostNetwork>,
        images: Arc<ImageCache>,
        migration_tls: MigrationTls,
    ) -> Result<Self> {
        let vms_dir = state_dir.join("vms");
        std::fs::create_dir_all(&vms_dir).map_err(Error::io("create", &vms_dir))?;
        let manager = Self {
            vms_dir: vms_dir.clone(),
            accel,
            store,
            vms: Mutex::default(),
            network,
            lifecycle: tokio::sync::Mutex::new(()),
            snapshots: SnapshotStore::new(state_dir),
            images,
            migration_tls,
        };
        let entries = std::fs::read_dir(&vms_dir).map_err(Error::io("list", &vms_dir))?;
        let mut attached = Vec::new();
        for entry in entries.flatten() {
            let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(|n| Uuid::parse_str(n).ok())
            else {
                continue;
            };
            match manager.load_one(id) {
                Ok(Some(ready)) => attached.push(ready),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(instance_id = %id, error = %e.chain(), "cannot load VM; skipped")
                }
            }
        }
        // Report current statuses from the first request on: wait (bounded) until every
        // actor has taken charge of its adopted QEMU.
        let all = futures::future::join_all(attached);
        if tokio::time::timeout(std::time::Duration::from_secs(15), all)
            .await
            .is_err()
        {
            tracing::warn!("some VMs are still being adopted");
        }
        Ok(manager)
    }

    /// Loads one VM; answers its actor's readiness (its actor re-applies the ports of a QEMU
    /// it adopts, knowing whether the guest runs here).
    fn load_one(&self, id: Uuid) -> Result<Option<tokio::sync::oneshot::Receiver<()>>> {
        let dir = VmDir::new(self.vms_dir.join(id.to_string()));
        let Some(spec) = dir.read_spec()? else {
            tracing::info!(instance_id = %id, "VM directory without spec.json (define did not complete)");
            return Ok(None);
        };
        let mut status = dir.read_state()?.unwrap_or_else(CoreStatus::defined);
        let adopt = QemuProcess::adopt(dir.paths());
        if adopt.is_none() {
            let (state, reason) = state::after_agent_restart(&status);
            if (state, &reason) != (status.state, &status.reason) || status.pid.is_some() {
                tracing::info!(instance_id = %id, ?state, reason, "QEMU is gone");
                status.state = state;
                status.reason = reason;
                status.pid = None;
                status.guest_ready = false;
                status.started_at = None;
                status.generation += 1;
                dir.write_state(&status)?;
            }
        }
        let (handle, ready) = VmHandle::spawn(ActorSetup {
            id,
            spec,
            dir,
            accel: self.accel,
            network: self.network.clone(),
            status,
            adopt,
            migration_tls: self.migration_tls.clone(),
        });
        self.lock().insert(id, handle);
        Ok(Some(ready))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Arc<VmHandle>>> {
        self.vms.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The VM `id`.
    pub fn get(&self, id: Uuid) -> Result<Arc<VmHandle>> {
        self.lock().get(&id).cloned().ok_or(Error::NotFound(id))
    }

    /// Every VM's handle.
    pub fn handles(&self) -> Vec<Arc<VmHandle>> {
        self.lock().values().cloned().collect()
    }

    /// Status of every VM.
    pub fn list(&self) -> Vec<VmStatus> {
        let handles: Vec<_> = self.lock().values().cloned().collect();
        let mut list: Vec<VmStatus> = handles.iter().map(|h| h.status()).collect();
        list.sort_by_key(|s| s.id);
        list
    }

    /// The host's image cache.
    pub fn images(&self) -> &ImageCache {
        &self.images
    }

    /// Digests of the uploaded images this host's VMs overlay.
    pub fn images_in_use(&self) -> HashSet<Digest> {
        self.lock()
            .values()
            .filter_map(|h| h.spec().image.blob.as_ref()?.digest.parse().ok())
            .collect()
    }

    /// A verified cached copy of the spec's uploaded image, fetched if needed (outside the
    /// lifecycle lock: a download does not hold up other VMs).
    pub async fn cached_image(&self, spec: &VmSpec) -> Result<Option<Lease>> {
        match &spec.image.blob {
            Some(blob) => Ok(Some(self.images.ensure(blob, &self.images_in_use()).await?)),
            None => Ok(None),
        }
    }

    /// Defines a VM: writes its spec and creates its disk (in shared storage if the host has
    /// one). Idempotent for the same spec; a different spec for an existing id is a conflict.
    pub async fn define(&self, id: Uuid, spec: VmSpec) -> Result<VmStatus> {
        validate(id, &spec)?;
        if let Ok(existing) = self.get(id) {
            if existing.spec() == &spec {
                return Ok(existing.status());
            }
        }
        let cached = self.cached_image(&spec).await?;
        let _serial = self.lifecycle.lock().await;
        if let Ok(existing) = self.get(id) {
            if existing.spec() == &spec {
                return Ok(existing.status());
            }
            return Err(Error::Conflict(format!(
                "VM {id} is already defined with a different spec"
            )));
        }
        disk::check_image(&spec)?;
        let dir = VmDir::new(self.vms_dir.join(id.to_string()));
        std::fs::create_dir_all(dir.dir()).map_err(Error::io("create", dir.dir()))?;
        let base = cached.as_ref().map(|l| l.path.as_path());
        if let Err(e) = disk::ensure_disk(&dir, &spec, &self.store, base).await {
            // Only an empty directory goes: a delete removes whatever else was made.
            let _ = std::fs::remove_dir(dir.dir());
            return Err(e);
        }
        // Its snapshots, received beforehand (a failure is undone with the VM's removal).
        crate::snapshot::moving::install::install(&dir, &self.snapshots.arriving(id)).await?;
        let status = CoreStatus::defined();
        dir.write_state(&status)?;
        // spec.json last: its presence means the define completed.
        dir.write_spec(&spec)?;
        tracing::info!(instance_id = %id, name = spec.name, "VM defined");
        let (handle, _ready) = VmHandle::spawn(ActorSetup {
            id,
            spec,
            dir,
            accel: self.accel,
            network: self.network.clone(),
            status,
            adopt: None,
            migration_tls: self.migration_tls.clone(),
        });
        let status = handle.status();
        self.lock().insert(id, handle);
        Ok(status)
    }

    /// Target side of a live migration: defines the VM with the disk the request names
    /// (see [`incoming`]), launches QEMU waiting for it, and answers where the source must
    /// send it. Idempotent while QEMU waits; any other VM with this id is a conflict. On
    /// failure nothing is left behind (a shared disk is never touched).
    pub async fn incoming(
        &self,
        id: Uuid,
        req: IncomingRequest,
        host: &str,
    ) -> Result<IncomingReady> {
        validate(id, &req.spec)?;
        crate::migration::policy::validate(&req.policy).map_err(Error::BadRequest)?;
        let plan = IncomingPlan {
            host: host.to_string(),
            mirror: req.disk == DiskTransfer::Mirror,
            policy: req.policy.clone(),
            source_host: req.source_host.clone(),
            tls_credential: req.tls_credential.clone(),
        };
        // Fetched before the lifecycle lock, as for a define.
        let cached = match self.get(id) {
            Ok(_) => None,
            Err(_) => self.cached_image(&req.spec).await?,
        };
        let (handle, fresh) = {
            let _serial = self.lifecycle.lock().await;
            match self.get(id) {
                Ok(existing) if existing.spec() == &req.spec => (existing, false),
                Ok(_) => {
                    return Err(Error::Conflict(format!(
                        "VM {id} is already defined with a different spec"
                    )))
                }
                Err(_) => {
                    let base = cached.as_ref().map(|l| l.path.as_path());
                    (self.define_incoming(id, &req, base).await?, true)
                }
            }
        };
        match handle.receive(plan).await {
            Ok(ready) => Ok(ready),
            Err(e) => {
                if fresh {
                    let shared = matches!(req.disk, DiskTransfer::Shared { .. });
                    if let Err(undo) = self.remove(id, shared).await {
                        tracing::warn!(instance_id = %id, error = %undo.chain(), "cannot clean up the failed target");
                    }
                }
                Err(e)
            }
        }
    }

    async fn define_incoming(
        &self,
        id: Uuid,
        req: &IncomingRequest,
        cached: Option<&Path>,
    ) -> Result<Arc<VmHandle>> {
        let record = IncomingRecord {
            disk: req.disk.clone(),
            policy: req.policy.clone(),
            ready: None,
            resumed: false,
            guest_ready: req.guest_ready,
        };
        let role = MigrationRole::Incoming(record);
        self.define_arriving(id, &req.spec, &req.disk, Some(role), cached)
            .await
    }

    /// Target side of a cold migration: defines the stopped VM with the disk the request
    /// names (a link to the shared disk, or a fresh overlay that the source's disk replaces,
    /// see [`crate::migration::cold`]). Idempotent for the same spec.
    pub async fn cold_incoming(&self, id: Uuid, req: ColdIncomingRequest) -> Result<VmStatus> {
        validate(id, &req.spec)?;
        // Fetched before the lifecycle lock, as for a define.
        let cached = match self.get(id) {
            Ok(_) => None,
            Err(_) => self.cached_image(&req.spec).await?,
        };
        let _serial = self.lifecycle.lock().await;
        match self.get(id) {
            Ok(existing) if existing.spec() == &req.spec => Ok(existing.status()),
            Ok(_) => Err(Error::Conflict(format!(
                "VM {id} is already defined with a different spec"
            ))),
            Err(_) => {
                let base = cached.as_ref().map(|l| l.path.as_path());
                Ok(self
                    .define_arriving(id, &req.spec, &req.disk, None, base)
                    .await?
                    .status())
            }
        }
    }

    /// Defines a VM arriving from another host, with its disk prepared as `disk` says and
    /// its part in the migration (`None` for a cold one).
    async fn define_arriving(
        &self,
        id: Uuid,
        spec: &VmSpec,
        disk: &DiskTransfer,
        role: Option<MigrationRole>,
        cached: Option<&Path>,
    ) -> Result<Arc<VmHandle>> {
        disk::check_image(spec)?;
        let dir = VmDir::new(self.vms_dir.join(id.to_string()));
        std::fs::create_dir_all(dir.dir()).map_err(Error::io("create", dir.dir()))?;
        if let Err(e) = incoming::prepare_disk(&dir, spec, disk, &self.store, cached).await {
            // Only an empty directory goes (one left by an earlier migration keeps its disk).
            let _ = std::fs::remove_dir(dir.dir());
            return Err(e);
        }
        // Its snapshots, received beforehand (a failure is undone with the VM's removal):
        // the disk part, then the memory part of a live move if it is complete already
        // (else it is installed when it is, see `import_snapshot_set`).
        crate::snapshot::moving::install::install(&dir, &self.snapshots.arriving(id)).await?;
        crate::snapshot::moving::install::install(&dir, &self.snapshots.arriving_memory(id))
            .await?;
        let status = CoreStatus::defined();
        dir.write_state(&status)?;
        if let Some(role) = &role {
            role::write(&dir, role)?;
        }
        dir.write_spec(spec)?;
        tracing::info!(instance_id = %id, ?disk, live = role.is_some(), "VM defined for a migration");
        let (handle, _ready) = VmHandle::spawn(ActorSetup {
            id,
            spec: spec.clone(),
            dir,
            accel: self.accel,
            network: self.network.clone(),
            status,
            adopt: None,
            migration_tls: self.migration_tls.clone(),
        });
        self.lock().insert(id, handle.clone());
        Ok(handle)
    }

    /// Deletes a VM: kills its QEMU and removes its directory and the disk directory it owns
    /// in shared storage. A directory left by an incomplete define is removed too; an unknown
    /// id is `not_found`.
    pub async fn delete(&self, id: Uuid) -> Result<()> {
        self.remove(id, false).await
    }

    /// Deletes a VM but leaves its own disk file in place (shared storage that another
    /// host now uses); a link to a shared disk goes, its target stays.
    pub async fn delete_keep_disk(&self, id: Uuid) -> Result<()> {
        self.remove(id, true).await
    }

    async fn remove(&self, id: Uuid, keep_disk: bool) -> Result<()> {
        let _serial = self.lifecycle.lock().await;
        let dir = VmDir::new(self.vms_dir.join(id.to_string()));
        let handle = self.get(id).ok();
        let spec = match &handle {
            Some(h) => {
                h.kill().await;
                Some(h.spec().clone())
            }
            None if dir.dir().exists() => {
                if let Some(mut qemu) = QemuProcess::adopt(dir.paths()) {
                    let _ = qemu.kill(std::time::Duration::ZERO).await;
                }
                dir.read_spec().ok().flatten()
            }
            None => {
                // Only snapshots staged for a VM that never arrived.
                if self.snapshots.remove_arriving(id)? {
                    self.collect_chunks().await;
                    return Ok(());
                }
                return Err(Error::NotFound(id));
            }
        };
        self.snapshots.remove_arriving(id)?;
        if let Some(spec) = &spec {
            self.network.unplug(spec).await?;
        }
        if keep_disk {
            dir.remove_all_but_disk()?;
        } else {
            // The shared disk first: while the link remains, a retry finds what is left.
            if let Some(shared) = self.store.owned_dir(id, &dir) {
                remove_dir(&shared)?;
            }
            remove_dir(dir.dir())?;
        }
        self.lock().remove(&id);
        crate::confine::release(id).await;
        tracing::info!(instance_id = %id, keep_disk, "VM deleted");
        // Its snapshots went with its directory: drop the chunks only they used.
        self.collect_chunks().await;
        Ok(())
    }

    /// Removes the memory chunks no snapshot uses any more (logged on failure).
    async fn collect_chunks(&self) {
        if let Err(e) = self.snapshots.collect_garbage().await {
            tracing::warn!(error = %e.chain(), "cannot collect unused memory chunks");
        }
    }

    /// Ends every actor and leaves the QEMU processes running (agent shutdown).
    pub async fn detach_all(&self) {
        let handles: Vec<_> = self.lock().drain().map(|(_, h)| h).collect();
        for h in handles {
            h.detach().await;
        }
    }
}

/// Removes `dir` and everything in it; an absent one is fine.
fn remove_dir(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io("remove", dir)(e)),
        _ => Ok(()),
    }
}

/// Checks a spec before anything is written.
pub fn validate(id: Uuid, spec: &VmSpec) -> Result<()> {
    let bad = |m: String| Err(Error::BadRequest(m));
    if spec.id != id {
        return bad(format!(
            "spec id {} does not match the path id {id}",
            spec.id
        ));
    }
    if spec.name.trim().is_empty() {
        return bad("the name must not be empty".into());
    }
    if spec.vcpus == 0 || spec.vcpus > 256 {
        return bad(format!("vcpus must be 1..=256, not {}", spec.vcpus));
    }
    if spec.memory_mib < 16 {
        return bad(format!(
            "memory_mib must be at least 16, not {}",
            spec.memory_mib
        ));
    }
    if spec.disk.size_gib == 0 {
        return bad("disk.size_gib must be at least 1".into());
    }
    guest::validate(&spec.nics).map_err(Error::BadRequest)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: Uuid) -> VmSpec {
        crate::test_support::blank_spec(id, Vec::new())
    }

    fn no_network() -> Arc<HostNetwork> {
        Arc::new(HostNetwork::disabled("unit test"))
    }

    fn no_images(state: &Path) -> Arc<ImageCache> {
        Arc::new(ImageCache::open(state, None, 1 << 30).expect("image cache"))
    }

    /// A manager of `state` keeping disks in `store`, with no network and no image source.
    async fn manager_with(state: &Path, store: DiskStore) -> Result<Manager> {
        Manager::load(
            state,
            Accel::Tcg,
            store,
            no_network(),
            no_images(state),
            MigrationTls::insecure(None),
        )
        .await
    }

    async fn local_manager(state: &Path) -> Result<Manager> {
        manager_with(state, DiskStore::Local).await
    }

    #[test]
    fn validation() {
        let id = Uuid::new_v4();
        assert!(validate(id, &spec(id)).is_ok());
        assert_eq!(
            validate(Uuid::nil(), &spec(id))
                .expect_err("must fail")
                .code(),
            "bad_request"
        );
        let mut s = spec(id);
        s.vcpus = 0;
        assert!(validate(id, &s).is_err());
        let mut s = spec(id);
        s.nics.push(nimbus_agent_api::NicSpec {
            mac: "52:54:00:00:00:01".into(),
            ip: "10.200.0.10".into(),
            gateway: None,
            vni: None,
        });
        assert_eq!(
            validate(id, &s).expect_err("must fail").code(),
            "bad_request"
        );
    }

    /// Shared storage: the disk is made in `<shared>/<id>/` and linked; the VM is re-adopted
    /// like any other; whatever an interrupted define left is removed by a delete.
    #[tokio::test]
    async fn shared_disks_are_made_linked_and_removed() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let base = tmp.path().join("base.qcow2");
        nimbus_qemu::img::create_blank(&base, 64 << 20)
            .await
            .expect("base");
        let shared = tmp.path().join("shared");
        std::fs::create_dir(&shared).expect("mkdir");
        let store = DiskStore::shared(&shared).expect("shared storage");
        let state = tmp.path().join("state");
        let mgr = manager_with(&state, store.clone()).await.expect("load");
        let id = Uuid::new_v4();
        let mut s = spec(id);
        s.image.base_disk = Some(base);
        let defined = mgr.define(id, s.clone()).await.expect("define");
        let disk = shared.join(id.to_string()).join("disk.qcow2");
        assert_eq!(defined.disk_path.as_deref(), Some(disk.as_path()));
        let again = mgr.define(id, s).await.expect("define again");
        assert_eq!(again.generation, defined.generation);

        // A new manager on the same directories knows the VM and its shared disk.
        mgr.detach_all().await;
        let mgr = manager_with(&state, store.clone()).await.expect("reload");
        let listed = mgr.list();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].disk_path.as_deref(), Some(disk.as_path()));
        mgr.delete(id).await.expect("delete");
        assert!(!shared.join(id.to_string()).exists() && !state.join(format!("vms/{id}")).exists());

        // A define interrupted after the link (no spec, a half-made disk): a delete cleans up.
        let id = Uuid::new_v4();
        let dir = VmDir::new(state.join(format!("vms/{id}")));
        std::fs::create_dir_all(dir.dir()).expect("mkdir");
        let half = store.shared_disk(id).expect("shared disk");
        dir.link_disk(&half).expect("link");
        std::fs::create_dir_all(half.parent().expect("parent")).expect("mkdir");
        std::fs::write(half.with_extension("qcow2.tmp"), b"half").expect("write");
        mgr.delete(id).await.expect("delete");
        assert!(!shared.join(id.to_string()).exists() && !dir.dir().exists());
        let left: Vec<_> = std::fs::read_dir(&shared).expect("list").collect();
        assert!(left.is_empty(), "{left:?}");

        // A define that fails (qemu-img refuses the size) leaves nothing anywhere.
        let id = Uuid::new_v4();
        let mut s = spec(id);
        s.image.base_disk = Some(tmp.path().join("base.qcow2"));
        s.disk.size_gib = 1 << 40;
        assert_eq!(
            mgr.define(id, s).await.expect_err("too big").code(),
            "internal"
        );
        assert!(!state.join(format!("vms/{id}")).exists());
        let left: Vec<_> = std::fs::read_dir(&shared).expect("list").collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[tokio::test]
    async fn define_is_idempotent_and_conflicts_on_change() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let base = tmp.path().join("base.qcow2");
        nimbus_qemu::img::create_blank(&base, 64 << 20)
            .await
            .expect("base");
        let mgr = local_manager(tmp.path()).await.expect("load");
        let id = Uuid::new_v4();
        let mut s = spec(id);
        s.image.base_disk = Some(base.clone());
        s.image.kernel = Some(tmp.path().join("missing-vmlinuz"));
        assert_eq!(
            mgr.define(id, s.clone())
                .await
                .expect_err("must fail")
                .code(),
            "image_missing"
        );
        s.image.kernel = None;
        let first = mgr.define(id, s.clone()).await.expect("define");
        assert_eq!(first.state, nimbus_agent_api::VmRunState::Stopped);
        assert!(first.disk_allocated_bytes > 0);
        let again = mgr.define(id, s.clone()).await.expect("define again");
        assert_eq!(again.generation, first.generation);
        let info = nimbus_qemu::img::info(&tmp.path().join(format!("vms/{id}/disk.qcow2")))
            .await
            .expect("info");
        assert_eq!(info.top().map(|t| t.virtual_size), Some(1 << 30));
        assert_eq!(info.chain.len(), 2);
        s.vcpus = 2;
        assert_eq!(
            mgr.define(id, s).await.expect_err("must fail").code(),
            "conflict"
        );

        // A new manager on the same directory knows the VM.
        mgr.detach_all().await;
        let mgr = local_manager(tmp.path()).await.expect("reload");
        assert_eq!(mgr.list().len(), 1);
        mgr.delete(id).await.expect("delete");
        assert!(!tmp.path().join(format!("vms/{id}")).exists());
        assert_eq!(
            mgr.delete(id).await.expect_err("must fail").code(),
            "not_found"
        );
    }
}
