//! Deleting a snapshot: its disk layer is merged into every layer built on it, its manifest
//! goes, and the memory chunks no other snapshot uses are removed. Every other snapshot stays
//! restorable (their manifests get the new checksums of their rebased layers).

use super::manifest::{self, SnapshotFiles};
use super::SnapshotStore;
use super::{failpoint, layers};
use crate::error::{Error, Result};
use crate::instance::{StreamPlan, VmHandle};
use nimbus_agent_api::DeleteSnapshotResult;
use std::path::{Path, PathBuf};
use uuid::Uuid;

/// Deletes snapshot `sid` of `vm` (also one whose taking failed half-way). Idempotent.
pub async fn delete(
    vm: &VmHandle,
    store: &SnapshotStore,
    sid: Uuid,
) -> Result<DeleteSnapshotResult> {
    let dir = vm.dir();
    let files = SnapshotFiles::new(dir, sid);
    let Some(layer) = files.layer()? else {
        files.remove()?;
        return Ok(DeleteSnapshotResult {
            snapshot_id: sid,
            freed_bytes: 0,
        });
    };
    let mut freed = 0;
    if layer.is_file() {
        merge_into_children(vm, &layer).await?;
        failpoint::check("delete.after_merge")?;
        // What QEMU merged must be on disk before the layer that held it goes (also when a
        // retry finds the merge done).
        if vm.has_qemu() {
            vm.flush_disks().await?;
        }
        freed += layers::allocated_bytes(&layer);
        std::fs::remove_file(&layer).map_err(Error::io("remove", &layer))?;
    }
    files.remove()?;
    freed += store.collect_garbage().await?;
    tracing::info!(instance_id = %vm.id(), snapshot_id = %sid, freed, "snapshot deleted");
    Ok(DeleteSnapshotResult {
        snapshot_id: sid,
        freed_bytes: freed,
    })
}

/// Makes every layer built on `layer` stand on `layer`'s own backing instead, keeping what
/// the guest sees in each.
async fn merge_into_children(vm: &VmHandle, layer: &Path) -> Result<()> {
    let dir = vm.dir();
    let base = layers::backing_of(layer).await?;
    let children = layers::children_of(dir, layer).await?;
    // Layers the running QEMU has open can only be changed through it.
    let live: Vec<PathBuf> = if vm.has_qemu() {
        layers::chain_of(&dir.top_disk()).await?
    } else {
        Vec::new()
    };
    for child in children {
        if live.iter().any(|l| layers::same_file(l, &child)) {
            vm.stream_layer(StreamPlan {
                layer: child.clone(),
                base: base.as_ref().map(|(b, _)| b.clone()),
            })
            .await?;
        } else {
            let backing = base.as_ref().map(|(b, f)| (b.as_path(), f.as_str()));
            nimbus_qemu::img::rebase(&child, backing).await?;
        }
        rehash_manifests_of(dir, &child).await?;
    }
    Ok(())
}

/// A rebased layer has new bytes: the manifests naming it get its new checksum.
async fn rehash_manifests_of(dir: &crate::instance::files::VmDir, layer: &Path) -> Result<()> {
    for mut m in manifest::all(dir)? {
        if !layers::same_file(&m.disk.path, layer) {
            continue;
        }
        let path = m.disk.path.clone();
        m.disk.hash = super::blocking(move || manifest::hash_file(&path)).await?;
        SnapshotFiles::new(dir, m.snapshot_id).write(&m)?;
    }
    Ok(())
}
