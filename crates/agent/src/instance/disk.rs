//! The instance disk: a qcow2 overlay on the image's base disk (or a blank qcow2), in the VM
//! directory or on shared storage ([`crate::storage`]). The base is the image's registered
//! file, or for an uploaded image its verified copy in the host's cache
//! ([`crate::image_cache`]), whose format is known and passed, never probed.

use super::files::VmDir;
use crate::error::{Error, Result};
use crate::storage::DiskStore;
use nimbus_agent_api::VmSpec;
use nimbus_qemu::img;
use std::path::Path;

const GIB: u64 = 1 << 30;

/// Checks that every file the image names exists and is absolute.
pub fn check_image(spec: &VmSpec) -> Result<()> {
    let image = &spec.image;
    if image.kernel.is_none() && image.base_disk.is_none() && image.blob.is_none() {
        return Err(Error::BadRequest(
            "the image needs a kernel (direct boot) or a base disk".into(),
        ));
    }
    if image.base_disk.is_some() && image.blob.is_some() {
        return Err(Error::BadRequest(
            "an image has a base disk path or an uploaded blob, not both".into(),
        ));
    }
    for path in [&image.kernel, &image.initrd, &image.base_disk]
        .into_iter()
        .flatten()
    {
        check_file(path)?;
    }
    Ok(())
}

fn check_file(path: &Path) -> Result<()> {
    if !path.is_absolute() {
        return Err(Error::BadRequest(format!(
            "image path {} must be absolute",
            path.display()
        )));
    }
    if !path.is_file() {
        return Err(Error::ImageMissing {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

/// Creates the instance disk of `spec` unless it exists: `disk.qcow2` in `dir`, or with
/// shared storage `<DIR>/<id>/disk.qcow2` linked from `dir` (see [`crate::storage`]).
/// Idempotent: a define that crashed half-way is completed by the next one.
/// `cached` is the cache's copy of an uploaded image (`spec.image.blob`).
pub async fn ensure_disk(
    dir: &VmDir,
    spec: &VmSpec,
    store: &DiskStore,
    cached: Option<&Path>,
) -> Result<()> {
    if dir.top_link().symlink_metadata().is_ok() {
        // The VM has snapshot layers: its disk is made, and its first layer may be gone
        // (merged away when the snapshot it held was deleted).
        return Ok(());
    }
    let Some(shared) = store.shared_disk(spec.id) else {
        return create(&dir.disk(), spec, cached).await;
    };
    let new_link = !dir.links_to(&shared);
    if new_link && shared.symlink_metadata().is_ok() {
        return Err(Error::Conflict(format!(
            "the shared disk {} already exists (another host may run it); not reusing it",
            shared.display()
        )));
    }
    let parent = shared
        .parent()
        .ok_or_else(|| Error::Internal(format!("{} has no parent", shared.display())))?;
    // What this call makes (the link, the directory) it undoes if it fails.
    let new_dir = !parent.exists();
    // The link first: whatever a crash leaves in shared storage, the VM directory points to
    // it, so deleting the VM removes it.
    dir.link_disk(&shared)?;
    let created = match std::fs::create_dir_all(parent) {
        Ok(()) => create(&shared, spec, cached).await,
        Err(e) => Err(Error::io("create", parent)(e)),
    };
    if created.is_err() {
        if new_dir {
            let _ = std::fs::remove_dir_all(parent);
        }
        if new_link {
            let _ = std::fs::remove_file(dir.disk());
        }
    }
    created
}

/// Creates the disk file `disk` of `spec` unless it exists. The overlay names its base disk
/// by absolute path with the base's own format, and is grown to `disk.size_gib` when that is
/// bigger than the base. Built under a temporary name, so a crash leaves no half disk.
async fn create(disk: &Path, spec: &VmSpec, cached: Option<&Path>) -> Result<()> {
    if disk.exists() {
        return Ok(());
    }
    let tmp = disk.with_extension("qcow2.tmp");
    if tmp.exists() {
        std::fs::remove_file(&tmp).map_err(Error::io("remove", &tmp))?;
    }
    let wanted = spec.disk.size_gib.saturating_mul(GIB);
    match (&spec.image.blob, cached, &spec.image.base_disk) {
        (Some(blob), Some(base), _) => {
            // The format the controller and the cache inspected, never probed.
            img::create_overlay(&tmp, base, &blob.format, Some(wanted)).await?;
        }
        (Some(blob), None, _) => {
            return Err(Error::Internal(format!(
                "image {} is not in the host's cache",
                blob.digest
            )))
        }
        (None, _, Some(base)) => {
            let info = img::info(base).await?;
            let top = info.top().ok_or_else(|| {
                Error::Internal(format!("qemu-img info of {} is empty", base.display()))
            })?;
            img::create_overlay(&tmp, base, &top.format, None).await?;
            if wanted > top.virtual_size {
                img::resize(&tmp, wanted).await?;
            }
        }
        (None, _, None) => img::create_blank(&tmp, wanted.max(GIB)).await?,
    }
    std::fs::rename(&tmp, disk).map_err(Error::io("rename", disk))
}
