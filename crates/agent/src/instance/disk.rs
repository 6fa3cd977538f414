//! The instance disk: a qcow2 overlay on the image's base disk (or a blank qcow2).

use super::files::VmDir;
use crate::error::{Error, Result};
use nimbus_agent_api::VmSpec;
use nimbus_qemu::img;
use std::path::Path;

const GIB: u64 = 1 << 30;

/// Checks that every file the image names exists and is absolute.
pub fn check_image(spec: &VmSpec) -> Result<()> {
    let image = &spec.image;
    if image.kernel.is_none() && image.base_disk.is_none() {
        return Err(Error::BadRequest(
            "the image needs a kernel (direct boot) or a base disk".into(),
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

/// Creates the instance disk of `spec` in `dir` unless it exists. The overlay names its base
/// disk by absolute path with the base's own format, and is grown to `disk.size_gib` when that
/// is bigger than the base. Built under a temporary name, so a crash leaves no half disk.
pub async fn ensure_disk(dir: &VmDir, spec: &VmSpec) -> Result<()> {
    let disk = dir.disk();
    if disk.exists() {
        return Ok(());
    }
    let tmp = disk.with_extension("qcow2.tmp");
    if tmp.exists() {
        std::fs::remove_file(&tmp).map_err(Error::io("remove", &tmp))?;
    }
    let wanted = spec.disk.size_gib.saturating_mul(GIB);
    match &spec.image.base_disk {
        Some(base) => {
            let info = img::info(base).await?;
            let top = info.top().ok_or_else(|| {
                Error::Internal(format!("qemu-img info of {} is empty", base.display()))
            })?;
            img::create_overlay(&tmp, base, &top.format, None).await?;
            if wanted > top.virtual_size {
                img::resize(&tmp, wanted).await?;
            }
        }
        None => img::create_blank(&tmp, wanted.max(GIB)).await?,
    }
    std::fs::rename(&tmp, &disk).map_err(Error::io("rename", &disk))
}
