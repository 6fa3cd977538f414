//! Disk layers: the copy-on-write tree of a VM's disk.
//!
//! A VM starts with one layer, its instance disk (an overlay on the image). A snapshot
//! freezes the layer the guest writes into (the *top*) and puts a new, empty layer on it:
//! the frozen layer holds exactly what the guest wrote since the previous snapshot, so a
//! snapshot costs only what changed. A restore to snapshot S puts a new top on S's layer,
//! so layers form the same tree as snapshots. Deleting S merges S's layer into each layer
//! built on it (`block-stream` for layers a running QEMU has open, a safe `qemu-img rebase`
//! for the others) and then removes it: no other snapshot loses data.
//!
//! Layer files are named by a fresh uuid in [`VmDir::layers_dir`] and never renamed, so the
//! file names QEMU keeps for its block nodes stay true; `top.qcow2` links to the top.

use crate::error::{Error, Result};
use crate::instance::files::VmDir;
use nimbus_qemu::{img, qcow2};
use std::path::{Path, PathBuf};
use uuid::Uuid;

/// A new top layer, made before the VM is paused.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTop {
    pub path: PathBuf,
    /// QEMU block node name for it.
    pub node: String,
    /// Its virtual size, the same as its backing's (the disk the guest sees).
    pub virtual_size: u64,
}

/// Creates an empty layer on `backing` (which QEMU may hold open) with `backing`'s virtual
/// size.
pub async fn new_layer_on(dir: &VmDir, backing: &Path) -> Result<NewTop> {
    let size = match qcow2::virtual_size(backing) {
        Some(size) => size,
        None => img::info(backing)
            .await?
            .top()
            .map(|t| t.virtual_size)
            .ok_or_else(|| {
                Error::Internal(format!("qemu-img info of {} is empty", backing.display()))
            })?,
    };
    let layers = dir.layers_dir();
    std::fs::create_dir_all(&layers).map_err(Error::io("create", &layers))?;
    let id = Uuid::new_v4().simple().to_string();
    let path = layers.join(format!("{id}.qcow2"));
    img::create_overlay_unchecked(&path, backing, "qcow2", size).await?;
    // QEMU opens it after dropping to the VM's user.
    crate::confine::user::give_new_file(dir.dir(), &layers)?;
    crate::confine::user::give_new_file(dir.dir(), &path)?;
    Ok(NewTop {
        path,
        node: format!("layer-{}", &id[..12]),
        virtual_size: size,
    })
}

/// The backing file of a layer and its format, if it has one: from its qcow2 header (see
/// [`qcow2::backing`]), or from `qemu-img info` for a file that header read cannot parse.
pub async fn backing_of(layer: &Path) -> Result<Option<(PathBuf, String)>> {
    if let Some(backing) = qcow2::backing(layer) {
        return Ok(backing);
    }
    let chain = img::info(layer).await?;
    let top = chain
        .top()
        .ok_or_else(|| Error::Internal(format!("qemu-img info of {} is empty", layer.display())))?;
    Ok(top.backing_filename.as_ref().map(|b| {
        let format = top
            .backing_filename_format
            .clone()
            .unwrap_or_else(|| "qcow2".into());
        (PathBuf::from(b), format)
    }))
}

/// The files of the chain under `layer`, `layer` first.
pub async fn chain_of(layer: &Path) -> Result<Vec<PathBuf>> {
    Ok(img::info(layer)
        .await?
        .chain
        .iter()
        .map(|i| PathBuf::from(&i.filename))
        .collect())
}

/// Every layer file of the VM: its first disk (if still there) and `layers/*.qcow2`.
pub fn layer_files(dir: &VmDir) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let root = dir.disk_path();
    if root.is_file() {
        out.push(root);
    }
    if let Ok(entries) = std::fs::read_dir(dir.layers_dir()) {
        out.extend(
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "qcow2")),
        );
    }
    out
}

/// The layers built directly on `layer`.
pub async fn children_of(dir: &VmDir, layer: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for file in layer_files(dir) {
        if same_file(&file, layer) {
            continue;
        }
        if let Some((backing, _)) = backing_of(&file).await? {
            if same_file(&backing, layer) {
                out.push(file);
            }
        }
    }
    Ok(out)
}

/// `a` and `b` name the same existing file (links followed).
pub fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// A VM whose snapshots are all deleted has one layer left on its image: it becomes the
/// instance disk again (`disk.qcow2`, no `top.qcow2`), so the VM can migrate. Only for a VM
/// without QEMU; does nothing while snapshots exist.
pub async fn collapse_if_flat(dir: &VmDir) -> Result<()> {
    let link = dir.top_link();
    if link.symlink_metadata().is_err() || !crate::snapshot::manifest::all(dir)?.is_empty() {
        return Ok(());
    }
    let top = dir.top_disk();
    let root = dir.disk_path();
    if root.exists() && !same_file(&root, &top) {
        // Still a chain under the top (an unexpected leftover): leave it as it is.
        if chain_of(&top).await?.iter().any(|l| same_file(l, &root)) {
            return Ok(());
        }
        std::fs::remove_file(&root).map_err(Error::io("remove", &root))?;
    }
    if !same_file(&root, &top) {
        std::fs::rename(&top, &root).map_err(Error::io("rename", &top))?;
    }
    std::fs::remove_file(&link).map_err(Error::io("remove", &link))?;
    tracing::info!(disk = %root.display(), "snapshot layers collapsed into the instance disk");
    Ok(())
}

/// Bytes a file occupies on the host.
pub fn allocated_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map_or(0, |m| m.blocks() * 512)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn layers_form_a_tree_on_the_disk() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = VmDir::new(tmp.path().join("vm"));
        std::fs::create_dir_all(dir.dir()).expect("mkdir");
        img::create_blank(&dir.disk(), 64 << 20)
            .await
            .expect("disk");
        let a = new_layer_on(&dir, &dir.disk()).await.expect("a");
        let b = new_layer_on(&dir, &a.path).await.expect("b");
        let c = new_layer_on(&dir, &a.path).await.expect("c");
        assert_eq!(layer_files(&dir).len(), 4);
        let mut kids = children_of(&dir, &a.path).await.expect("children");
        kids.sort();
        let mut want = vec![b.path.clone(), c.path.clone()];
        want.sort();
        assert_eq!(kids, want);
        assert_eq!(chain_of(&b.path).await.expect("chain").len(), 3);
        let (backing, format) = backing_of(&b.path).await.expect("backing").expect("some");
        assert!(same_file(&backing, &a.path) && format == "qcow2");
        dir.set_top_disk(&c.path).expect("top");
        assert_eq!(dir.top_disk(), c.path);
        // The size and backing read from the header are qemu-img's, for the image and each
        // layer.
        for layer in [&dir.disk(), &a.path, &c.path] {
            let info = img::info(layer).await.expect("info");
            let top = info.top().expect("top");
            assert_eq!(
                qcow2::virtual_size(layer),
                Some(top.virtual_size),
                "{}",
                layer.display()
            );
            let want = top.backing_filename.as_ref().map(|b| {
                let format = top.backing_filename_format.clone();
                (PathBuf::from(b), format.unwrap_or_else(|| "qcow2".into()))
            });
            assert_eq!(qcow2::backing(layer), Some(want), "{}", layer.display());
        }
        // A version 2 image on a raw backing, with its format recorded.
        let raw = tmp.path().join("base.raw");
        std::fs::write(&raw, vec![0u8; 1 << 20]).expect("raw");
        let v2 = tmp.path().join("v2.qcow2");
        let made = std::process::Command::new("qemu-img")
            .args([
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                "compat=0.10",
                "-F",
                "raw",
                "-b",
            ])
            .arg(&raw)
            .arg(&v2)
            .status()
            .expect("qemu-img");
        assert!(made.success());
        assert_eq!(qcow2::backing(&v2), Some(Some((raw.clone(), "raw".into()))));
        assert_eq!(qcow2::backing(&raw), None, "not a qcow2: qemu-img is asked");
        assert_eq!(c.virtual_size, 64 << 20);
        std::fs::write(tmp.path().join("raw"), [0u8; 4096]).expect("raw");
        assert_eq!(qcow2::virtual_size(&tmp.path().join("raw")), None);
    }
}
