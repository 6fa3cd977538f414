//! Target side: a VM arriving here takes its staged snapshot set (see the module doc): when
//! it is defined, or, for the memory part of a live move, as soon as that part arrives.

use super::import::staged_layer;
use super::{Arriving, StagedSet, ROOT_LAYER};
use crate::error::{Error, Result};
use crate::instance::files::VmDir;
use crate::snapshot::layers;
use crate::snapshot::manifest::{self, SnapshotFiles};
use std::path::PathBuf;

/// Where layer `name` lives in the VM directory `dir`.
fn final_path(dir: &VmDir, name: &str) -> PathBuf {
    if name == ROOT_LAYER {
        dir.disk_path()
    } else {
        dir.layers_dir().join(name)
    }
}

/// Installs the staged set of the VM in `dir` (whose disk was just prepared: a fresh overlay
/// on this host's base image, or the link to its shared disk), then removes it. Does
/// nothing when no set is staged.
pub async fn install(dir: &VmDir, arriving: &Arriving) -> Result<bool> {
    let Some(set) = arriving.read_set()? else {
        return Ok(false);
    };
    let started = std::time::Instant::now();
    // The fresh top is made beside the rebases (it does not open the layer below it).
    let top = if set.layers.is_empty() {
        top_of(dir, &set).await?
    } else {
        let rebases = place_layers(dir, arriving, &set).await?;
        let rebased = futures::future::try_join_all(rebases);
        tokio::try_join!(rebased, top_of(dir, &set))?.1
    };
    let rebased = started.elapsed();
    // Layers received (now or before, by a disk part) were rebased onto this host's paths:
    // new bytes, the same guest-visible content. Shared layers are the source's own files.
    let rehash = !set.layers.is_empty() || !is_shared_disk(dir);
    let staged = VmDir::new(arriving.dir().to_path_buf());
    // Each manifest on its own (the layers are hashed side by side).
    let manifests = manifest::all(&staged)?.into_iter().map(|mut m| async move {
        let name = m.disk.path.to_string_lossy().into_owned();
        m.disk.path = final_path(dir, &name);
        if !m.disk.path.is_file() {
            return Err(Error::BadRequest(format!(
                "the layer {} of snapshot {} is not on this host",
                m.disk.path.display(),
                m.snapshot_id
            )));
        }
        if rehash {
            let path = m.disk.path.clone();
            m.disk.hash = crate::snapshot::blocking(move || manifest::hash_file(&path)).await?;
        }
        SnapshotFiles::new(dir, m.snapshot_id).write(&m)
    });
    futures::future::try_join_all(manifests).await?;
    if let Some(top) = &top {
        dir.set_top_disk(top)?;
    }
    arriving.remove()?;
    tracing::info!(layers = set.layers.len(), top = ?set.top, ?rebased, took = ?started.elapsed(), "arriving snapshots installed");
    Ok(true)
}

/// The layer the VM's disk is to open, from the staged set's top (once its layers are in
/// place): a fresh one made on it for a live move, which the disk mirror fills; `None` when
/// the set names no top.
async fn top_of(dir: &VmDir, set: &StagedSet) -> Result<Option<PathBuf>> {
    let Some((name, fresh)) = &set.top else {
        return Ok(None);
    };
    let below = final_path(dir, name);
    if !below.is_file() {
        return Err(Error::BadRequest(format!(
            "the top layer {} is not on this host",
            below.display()
        )));
    }
    Ok(Some(if *fresh {
        layers::new_layer_on(dir, &below).await?.path
    } else {
        below
    }))
}

/// Whether the VM's disk is a link to its disk on shared storage.
fn is_shared_disk(dir: &VmDir) -> bool {
    dir.disk()
        .symlink_metadata()
        .is_ok_and(|m| m.file_type().is_symlink())
}

/// Moves the staged layers into the VM's disk directory; answers their rebases, which point
/// each at its backing on this host: the first at the base image the fresh disk stands on,
/// the others at their layer. Never over a shared disk.
async fn place_layers<'a>(
    dir: &'a VmDir,
    arriving: &Arriving,
    set: &StagedSet,
) -> Result<Vec<impl std::future::Future<Output = Result<()>> + 'a>> {
    let disk = dir.disk();
    if is_shared_disk(dir) {
        return Err(Error::Conflict(format!(
            "{} is a shared disk: received layers never replace it",
            disk.display()
        )));
    }
    let base = layers::backing_of(&disk).await?;
    let layers_dir = dir.layers_dir();
    std::fs::create_dir_all(&layers_dir).map_err(Error::io("create", &layers_dir))?;
    crate::confine::user::give_new_file(dir.dir(), &layers_dir)?;
    // Each layer is rebased on its own: side by side (one `qemu-img` process each).
    let mut rebases = Vec::new();
    for layer in &set.layers {
        let from = staged_layer(arriving, &layer.name);
        let to = final_path(dir, &layer.name);
        std::fs::rename(&from, &to).map_err(Error::io("rename", &from))?;
        let backing = match &layer.backing {
            Some(b) => Some((final_path(dir, b), "qcow2".to_string())),
            None => base.clone(),
        };
        rebases.push(async move {
            let backing = backing.as_ref().map(|(p, f)| (p.as_path(), f.as_str()));
            nimbus_qemu::img::rebase_unchecked(&to, backing).await?;
            crate::confine::user::give_new_file(dir.dir(), &to)
        });
    }
    Ok(rebases)
}
