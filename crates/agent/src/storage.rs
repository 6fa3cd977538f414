//! Where this host keeps instance disks.
//!
//! ```text
//! local (default)   <state_dir>/vms/<id>/disk.qcow2           the disk itself
//! shared (DIR)      <DIR>/<id>/disk.qcow2                     the disk
//!                   <state_dir>/vms/<id>/disk.qcow2 -> <DIR>/<id>/disk.qcow2
//! ```
//! Shared storage is a directory every host sees at the same path (an NFS mount, or on one
//! machine a plain directory). The VM directory references the disk there the way a
//! migration target references a disk it shares ([`VmDir::link_disk`]), so hosts reporting
//! the same directory move VMs without copying disks.
//!
//! A VM owns `<DIR>/<id>/` when its `disk.qcow2` links to `<DIR>/<id>/disk.qcow2` of this
//! host's shared storage: deleting the VM removes that directory too; a delete that keeps the
//! disk (the source of a migration, which another host now runs) removes the link only.

use crate::instance::files::VmDir;
use anyhow::{bail, Context};
use std::path::{Component, Path, PathBuf};
use uuid::Uuid;

/// File name of an instance disk, in a VM directory and in shared storage.
const DISK_FILE: &str = "disk.qcow2";

/// Where instance disks live.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum DiskStore {
    /// In each VM's directory, on this host only.
    #[default]
    Local,
    /// In `<dir>/<id>/` on shared storage (absolute, normalized).
    Shared(PathBuf),
}

impl DiskStore {
    /// Shared storage in `dir`, which must exist, be a directory and be writable (checked by
    /// writing a file there, as the agent will).
    pub fn shared(dir: &Path) -> anyhow::Result<Self> {
        let dir = normalize(
            &std::path::absolute(dir)
                .with_context(|| format!("invalid shared storage directory {}", dir.display()))?,
        );
        match std::fs::metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => bail!("shared storage {} is not a directory", dir.display()),
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "shared storage directory {} is not usable (it must exist)",
                        dir.display()
                    )
                })
            }
        }
        let probe = dir.join(format!(".nimbus-write-check-{}", Uuid::new_v4()));
        std::fs::write(&probe, b"nimbus").with_context(|| {
            format!("shared storage directory {} is not writable", dir.display())
        })?;
        match std::fs::remove_file(&probe) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| {
                    format!("cannot remove {} in shared storage", probe.display())
                })
            }
            _ => {}
        }
        Ok(Self::Shared(dir))
    }

    /// The shared storage directory, if any.
    pub fn shared_dir(&self) -> Option<&Path> {
        match self {
            DiskStore::Local => None,
            DiskStore::Shared(dir) => Some(dir),
        }
    }

    /// Where the disk of VM `id` lives in shared storage (`None` with local disks).
    pub fn shared_disk(&self, id: Uuid) -> Option<PathBuf> {
        self.shared_dir()
            .map(|dir| dir.join(id.to_string()).join(DISK_FILE))
    }

    /// The directory in shared storage that VM `id` (directory `dir`) owns: `<DIR>/<id>/`
    /// when its disk links there (see the module doc), whether or not the disk exists yet.
    pub fn owned_dir(&self, id: Uuid, dir: &VmDir) -> Option<PathBuf> {
        let disk = self.shared_disk(id)?;
        if dir.links_to(&disk) {
            disk.parent().map(Path::to_path_buf)
        } else {
            None
        }
    }

    /// Free space for instance disks, in GiB: on the shared storage, else in `state_dir`.
    pub fn free_gib(&self, state_dir: &Path) -> u64 {
        crate::host::disk_free_gib(self.shared_dir().unwrap_or(state_dir))
    }
}

/// `path` without `.` components and trailing slashes (as hosts compare it as a string).
fn normalize(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_storage_must_be_a_writable_directory() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let missing = tmp.path().join("missing");
        let err = DiskStore::shared(&missing).expect_err("missing");
        assert!(format!("{err:#}").contains("must exist"), "{err:#}");
        let file = tmp.path().join("file");
        std::fs::write(&file, b"x").expect("write");
        let err = DiskStore::shared(&file).expect_err("a file");
        assert!(format!("{err:#}").contains("not a directory"), "{err:#}");

        let with_slash = format!("{}/./", tmp.path().display());
        let store = DiskStore::shared(Path::new(&with_slash)).expect("shared");
        assert_eq!(
            store.shared_dir().map(|d| d.display().to_string()),
            Some(tmp.path().display().to_string()),
            "normalized: hosts compare it as a string"
        );
        let left: Vec<_> = std::fs::read_dir(tmp.path())
            .expect("list")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(
            left,
            vec![std::ffi::OsString::from("file")],
            "probe removed"
        );
        assert_eq!(DiskStore::Local.shared_disk(Uuid::nil()), None);
    }

    #[test]
    fn a_vm_owns_the_shared_directory_its_disk_links_to() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = DiskStore::Shared(tmp.path().join("shared"));
        let id = Uuid::new_v4();
        let dir = VmDir::new(tmp.path().join("vm"));
        std::fs::create_dir_all(dir.dir()).expect("mkdir");
        assert_eq!(store.owned_dir(id, &dir), None, "no disk yet");
        let disk = store.shared_disk(id).expect("shared disk");
        dir.link_disk(&disk).expect("link");
        assert_eq!(
            store.owned_dir(id, &dir),
            Some(tmp.path().join("shared").join(id.to_string()))
        );
        // Another VM's disk, or a local store: not owned.
        assert_eq!(store.owned_dir(Uuid::new_v4(), &dir), None);
        assert_eq!(DiskStore::Local.owned_dir(id, &dir), None);
    }
}
