//! Cloning: a new VM that resumes from another VM's snapshot on this host. Its disk is a
//! standalone copy (on the image, holding what the snapshot's chain changed), so the clone
//! does not tie the source's snapshots; its identity (name, MAC, IP) is its own, given to
//! the guest once it runs, and its randomness is reseeded.

use super::manifest::Manifest;
use crate::error::{Error, Result};
use crate::instance::files::VmDir;
use nimbus_agent_api::VmSpec;
use nimbus_qemu::img;

/// Checks that `spec` can run the snapshot `m`: same machine size.
pub fn check_compatible(spec: &VmSpec, m: &Manifest) -> Result<()> {
    if spec.vcpus != m.spec.vcpus || spec.memory_mib != m.spec.memory_mib {
        return Err(Error::BadRequest(format!(
            "a clone must have the snapshot's machine size ({} vCPUs, {} MiB), not {} vCPUs, \
             {} MiB",
            m.spec.vcpus, m.spec.memory_mib, spec.vcpus, spec.memory_mib
        )));
    }
    Ok(())
}

/// Writes the clone's disk `disk.qcow2` in `dir`: what the guest sees through the
/// snapshot's layer, stored on the clone's image when it has one (`cached`: the host's
/// copy of an uploaded image).
pub async fn copy_disk(
    m: &Manifest,
    dir: &VmDir,
    spec: &VmSpec,
    cached: Option<&std::path::Path>,
) -> Result<()> {
    let target = dir.disk();
    let tmp = target.with_extension("qcow2.tmp");
    let _ = std::fs::remove_file(&tmp);
    let base = match (&spec.image.blob, cached, &spec.image.base_disk) {
        (Some(blob), Some(c), _) => Some((c.to_path_buf(), blob.format.clone())),
        (Some(blob), None, _) => {
            return Err(Error::Internal(format!(
                "image {} is not in the host's cache",
                blob.digest
            )))
        }
        (None, _, Some(b)) => {
            let format = img::info(b)
                .await?
                .top()
                .map(|t| t.format.clone())
                .unwrap_or_else(|| "qcow2".into());
            Some((b.clone(), format))
        }
        (None, _, None) => None,
    };
    img::convert_onto(
        &m.disk.path,
        &tmp,
        base.as_ref().map(|(b, f)| (b.as_path(), f.as_str())),
    )
    .await?;
    std::fs::rename(&tmp, &target).map_err(Error::io("rename", &tmp))
}
