//! Cold migration: moving a stopped VM (issue 14, part 2). No QEMU runs on either side.
//!
//! ```text
//!  controller            target agent                        source agent
//!  PUT /vms/{id}/cold ─▶ defines the VM, stopped: a link to
//!                        the shared disk, or a fresh overlay
//!                        on the same base image
//!  GET /vms/{id}/disk ─────────────────────────────────────▶ streams its overlay (the VM
//!                                                            must be stopped), with its
//!                                                            BLAKE3 digest in a header
//!  PUT /vms/{id}/disk ─▶ writes it beside the fresh overlay,
//!                        checks the digest and that it is a
//!                        qcow2 on the spec's base image only,
//!                        then renames it over the overlay
//! ```
//! The controller relays the bytes (it already talks to both agents over authenticated
//! channels; the agents need no trust in each other). Shared disks are never copied nor
//! overwritten. Snapshot layers do not move yet: an instance with snapshots is refused
//! before this point.

use crate::error::{Error, Result};
use crate::instance::files::VmDir;
use crate::instance::VmHandle;
use futures::{Stream, StreamExt};
use nimbus_agent_api::{VmRunState, VmSpec};
use std::path::Path;
use tokio::io::AsyncWriteExt;

pub use nimbus_agent_api::client::DISK_DIGEST_HEADER;

/// A disk ready to be streamed.
pub struct Export {
    pub file: tokio::fs::File,
    pub len: u64,
    pub digest: String,
}

/// Opens the stopped VM's own disk for sending.
pub async fn export(vm: &VmHandle) -> Result<Export> {
    require_stopped(vm, "sent")?;
    let dir = vm.dir();
    let disk = own_disk(dir)?;
    let digest = digest_of(&disk).await?;
    let file = tokio::fs::File::open(&disk)
        .await
        .map_err(Error::io("open", &disk))?;
    let len = file
        .metadata()
        .await
        .map_err(Error::io("stat", &disk))?
        .len();
    tracing::info!(instance_id = %vm.id(), bytes = len, "sending the disk of a stopped VM");
    Ok(Export { file, len, digest })
}

/// Receives the disk of a VM defined here for a cold migration (still stopped), checks it
/// and puts it in place of the fresh overlay.
pub async fn import<S, E>(vm: &VmHandle, body: S, digest: &str) -> Result<u64>
where
    S: Stream<Item = std::result::Result<axum::body::Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    require_stopped(vm, "replaced")?;
    let dir = vm.dir();
    let disk = own_disk(dir)?;
    let tmp = disk.with_extension("qcow2.incoming");
    let written = receive(body, &tmp).await;
    let checked = match written {
        Ok(n) => check(&tmp, n, digest, vm.spec()).await.map(|()| n),
        Err(e) => Err(e),
    };
    let n = match checked {
        Ok(n) => n,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    std::fs::rename(&tmp, &disk).map_err(Error::io("rename", &tmp))?;
    tracing::info!(instance_id = %vm.id(), bytes = n, "disk received for a cold migration");
    Ok(n)
}

fn require_stopped(vm: &VmHandle, what: &str) -> Result<()> {
    let state = vm.status().state;
    if !matches!(state, VmRunState::Stopped | VmRunState::Crashed) {
        return Err(Error::Conflict(format!(
            "the disk of VM {} can only be {what} while it is stopped (it is {state:?})",
            vm.id()
        )));
    }
    Ok(())
}

/// The VM's own disk file: not a shared disk (a link), and no snapshot layers above it.
fn own_disk(dir: &VmDir) -> Result<std::path::PathBuf> {
    let disk = dir.disk();
    let meta = disk.symlink_metadata().map_err(Error::io("stat", &disk))?;
    if meta.file_type().is_symlink() {
        return Err(Error::Conflict(format!(
            "{} is a shared disk: nothing to copy, never overwritten",
            disk.display()
        )));
    }
    if dir.top_disk() != disk {
        return Err(Error::Conflict(
            "the VM has snapshot layers, which cold migration does not move yet".into(),
        ));
    }
    Ok(disk)
}

async fn receive<S, E>(mut body: S, tmp: &Path) -> Result<u64>
where
    S: Stream<Item = std::result::Result<axum::body::Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let mut file = tokio::fs::File::create(tmp)
        .await
        .map_err(Error::io("create", tmp))?;
    let mut n = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| {
            Error::BadRequest(format!("the disk stream broke off after {n} bytes: {e}"))
        })?;
        file.write_all(&chunk)
            .await
            .map_err(Error::io("write", tmp))?;
        n += chunk.len() as u64;
    }
    file.sync_all().await.map_err(Error::io("sync", tmp))?;
    Ok(n)
}

/// The received file is what the source sent, and a qcow2 on the spec's base image (or on
/// nothing for a blank disk): never a chain that would open another file of this host.
async fn check(tmp: &Path, n: u64, digest: &str, spec: &VmSpec) -> Result<()> {
    let got = digest_of(tmp).await?;
    if !got.eq_ignore_ascii_case(digest) {
        return Err(Error::BadRequest(format!(
            "the received disk ({n} bytes) does not match its digest: it was damaged in transit"
        )));
    }
    let info = nimbus_qemu::img::info(tmp).await?;
    let top = info
        .top()
        .ok_or_else(|| Error::BadRequest("qemu-img sees no image in the received disk".into()))?;
    let base = spec
        .image
        .base_disk
        .as_ref()
        .map(|b| b.display().to_string());
    if top.format != "qcow2" || top.backing_filename != base || info.chain.len() > 2 {
        return Err(Error::BadRequest(format!(
            "the received disk is a {} on {:?}; expected a qcow2 on {:?}",
            top.format, top.backing_filename, base
        )));
    }
    Ok(())
}

/// BLAKE3 of a file, hex.
async fn digest_of(path: &Path) -> Result<String> {
    let owned = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut hasher = blake3::Hasher::new();
        let mut file = std::fs::File::open(&owned).map_err(Error::io("open", &owned))?;
        std::io::copy(&mut file, &mut hasher).map_err(Error::io("read", &owned))?;
        Ok(hasher.finalize().to_hex().to_string())
    })
    .await
    .map_err(|e| Error::Internal(format!("digest task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use nimbus_qemu::img;

    /// What the target accepts: the bytes the source sent (digest), as a qcow2 on the spec's
    /// base image; a damaged transfer or a chain that would open another file is refused.
    #[tokio::test]
    async fn received_disks_are_checked() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let base = tmp.path().join("base.qcow2");
        let other = tmp.path().join("other.qcow2");
        let disk = tmp.path().join("disk.qcow2");
        img::create_blank(&base, 1 << 30).await.expect("base");
        img::create_blank(&other, 1 << 30).await.expect("other");
        img::create_overlay(&disk, &base, "qcow2", None)
            .await
            .expect("overlay");
        let n = std::fs::metadata(&disk).expect("stat").len();
        let digest = digest_of(&disk).await.expect("digest");
        let mut spec = crate::test_support::blank_spec(uuid::Uuid::new_v4(), Vec::new());
        spec.image.base_disk = Some(base.clone());

        check(&disk, n, &digest, &spec).await.expect("accepted");
        let damaged = check(&disk, n, &"0".repeat(64), &spec)
            .await
            .expect_err("wrong digest");
        assert!(damaged.to_string().contains("damaged"), "{damaged}");
        spec.image.base_disk = Some(other);
        let wrong = check(&disk, n, &digest, &spec)
            .await
            .expect_err("another base");
        assert!(wrong.to_string().contains("expected a qcow2 on"), "{wrong}");
    }
}
