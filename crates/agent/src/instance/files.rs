//! The agent's files in a VM directory, next to QEMU's ([`nimbus_qemu::VmPaths`]):
//!
//! ```text
//! <state_dir>/vms/<id>/spec.json      the VmSpec, written at define
//! <state_dir>/vms/<id>/state.json     the persisted CoreStatus, rewritten on every change
//! <state_dir>/vms/<id>/disk.qcow2     the instance disk (overlay on the image's base disk),
//!                                     or a link to a disk elsewhere ([`VmDir::link_disk`]:
//!                                     shared storage, an arrived migration)
//! <state_dir>/vms/<id>/migration.json the VM's part in a migration (crate::migration::role)
//! <state_dir>/vms/<id>/heartbeat.log  `<unix_ms_host> <line>` per heartbeat (rotated)
//! <state_dir>/vms/<id>/meter.json     the open usage meter (crate::metering::meter)
//! <state_dir>/vms/<id>/top.qcow2      once the VM has snapshots: a link to the disk layer the
//!                                     guest writes into (see crate::snapshot::layers)
//! <state_dir>/vms/<id>/snapshots/<sid>/ a snapshot's manifest (crate::snapshot::manifest)
//! <disk dir>/layers/<uuid>.qcow2      disk layers written after snapshots, next to the disk
//! ```

use super::state::CoreStatus;
use crate::error::{Error, Result};
use nimbus_agent_api::VmSpec;
use nimbus_qemu::VmPaths;
use std::path::{Path, PathBuf};

/// One VM's directory.
#[derive(Debug, Clone)]
pub struct VmDir {
    paths: VmPaths,
}

impl VmDir {
    /// The directory `dir` (absolute).
    pub fn new(dir: PathBuf) -> Self {
        Self {
            paths: VmPaths::new(dir),
        }
    }

    /// QEMU's paths in this directory.
    pub fn paths(&self) -> &VmPaths {
        &self.paths
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        self.paths.dir()
    }

    /// `spec.json`.
    pub fn spec_file(&self) -> PathBuf {
        self.dir().join("spec.json")
    }

    /// `state.json`.
    pub fn state_file(&self) -> PathBuf {
        self.dir().join("state.json")
    }

    /// The instance disk.
    pub fn disk(&self) -> PathBuf {
        self.dir().join("disk.qcow2")
    }

    /// The heartbeat log.
    pub fn heartbeat_log(&self) -> PathBuf {
        self.dir().join("heartbeat.log")
    }

    /// Reads `spec.json`; `None` if absent (a define that did not complete).
    pub fn read_spec(&self) -> Result<Option<VmSpec>> {
        read_json(&self.spec_file())
    }

    /// Writes `spec.json` atomically.
    pub fn write_spec(&self, spec: &VmSpec) -> Result<()> {
        write_json(&self.spec_file(), spec)
    }

    /// Reads `state.json`; `None` if absent.
    pub fn read_state(&self) -> Result<Option<CoreStatus>> {
        read_json(&self.state_file())
    }

    /// Writes `state.json` atomically.
    pub fn write_state(&self, state: &CoreStatus) -> Result<()> {
        write_json(&self.state_file(), state)
    }

    /// Current length of `console.log` (0 if it does not exist yet).
    pub fn console_len(&self) -> u64 {
        std::fs::metadata(self.paths.console_log()).map_or(0, |m| m.len())
    }

    /// Where the instance disk really is: the target of `disk.qcow2` when that is a link to
    /// a disk elsewhere, else `disk.qcow2` itself.
    pub fn disk_path(&self) -> PathBuf {
        let disk = self.disk();
        std::fs::read_link(&disk).unwrap_or(disk)
    }

    /// Makes `disk.qcow2` a symbolic link to `target` (absolute): the one way a VM references
    /// a disk outside its directory (on shared storage, or shared with a migration source).
    /// QEMU opens the link; deleting the VM removes the link, and its target only when that
    /// is the VM's own disk on this host's shared storage ([`crate::storage`]). The target
    /// need not exist yet.
    /// Idempotent when `disk.qcow2` already is that link or that very file; anything else
    /// there is a conflict.
    pub fn link_disk(&self, target: &Path) -> Result<()> {
        if !target.is_absolute() {
            return Err(Error::BadRequest(format!(
                "disk path {} must be absolute",
                target.display()
            )));
        }
        let own = self.disk();
        if self.links_to(target) || is_same_file(target, &own) {
            return Ok(());
        }
        if own.symlink_metadata().is_ok() {
            return Err(Error::Conflict(format!(
                "{} already exists and is not the disk {}",
                own.display(),
                target.display()
            )));
        }
        std::os::unix::fs::symlink(target, &own).map_err(Error::io("link", &own))
    }

    /// `disk.qcow2` is a link to `target`.
    pub fn links_to(&self, target: &Path) -> bool {
        std::fs::read_link(self.disk()).is_ok_and(|t| t == target)
    }

    /// Removes everything in the directory but a disk file of its own (`disk.qcow2` when it
    /// is not a link), which another host may be using from shared storage.
    pub fn remove_all_but_disk(&self) -> Result<()> {
        let disk = self.disk();
        let keep = disk.symlink_metadata().is_ok_and(|m| m.is_file());
        let entries = match std::fs::read_dir(self.dir()) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io("list", self.dir())(e)),
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if keep && path == disk {
                continue;
            }
            let removed = if entry.file_type().is_ok_and(|t| t.is_dir()) {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            match removed {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(Error::io("remove", &path)(e))
                }
                _ => {}
            }
        }
        if !keep {
            let _ = std::fs::remove_dir(self.dir());
        }
        Ok(())
    }

    /// The disk layer the guest writes into: the target of `top.qcow2` once the VM has
    /// snapshots, else the instance disk. QEMU is always given this real path, so that the
    /// names it keeps for its block nodes stay true while links change.
    pub fn top_disk(&self) -> PathBuf {
        std::fs::read_link(self.top_link()).unwrap_or_else(|_| self.disk_path())
    }

    /// `top.qcow2`.
    pub fn top_link(&self) -> PathBuf {
        self.dir().join("top.qcow2")
    }

    /// Points `top.qcow2` at `layer` (atomically: a new link renamed over the old one).
    pub fn set_top_disk(&self, layer: &Path) -> Result<()> {
        let tmp = self.dir().join("top.qcow2.tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(layer, &tmp).map_err(Error::io("link", &tmp))?;
        std::fs::rename(&tmp, self.top_link()).map_err(Error::io("rename", &tmp))
    }

    /// Where the disk layers written after snapshots live: `layers/` next to the real disk
    /// (in shared storage when the disk is there).
    pub fn layers_dir(&self) -> PathBuf {
        let disk = self.disk_path();
        disk.parent().unwrap_or(self.dir()).join("layers")
    }

    /// `snapshots/`: one directory per snapshot of this VM.
    pub fn snapshots_dir(&self) -> PathBuf {
        self.dir().join("snapshots")
    }

    /// Bytes the instance disk occupies on the host: its top layer (the layers frozen by
    /// snapshots are the snapshots' storage).
    pub fn disk_allocated_bytes(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(self.top_disk()).map_or(0, |m| m.blocks() * 512)
    }
}

/// `a` and `b` (links followed) are the same existing file.
fn is_same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => (x.dev(), x.ino()) == (y.dev(), y.ino()),
        _ => false,
    }
}

pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::Internal(format!("{} is not valid: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("read", path)(e)),
    }
}

/// Writes a file whole, so a reader never sees half of it, and never an older state after a
/// newer one written by another task ([`super::atomic_file`]).
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| Error::Internal(format!("cannot serialize {}: {e}", path.display())))?;
    super::atomic_file::replace(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trip_and_absent_files() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = VmDir::new(tmp.path().to_path_buf());
        assert!(dir.read_spec().expect("read").is_none());
        assert!(dir.read_state().expect("read").is_none());
        let state = CoreStatus::defined();
        dir.write_state(&state).expect("write");
        assert_eq!(dir.read_state().expect("read"), Some(state));
        std::fs::write(dir.spec_file(), b"{").expect("write");
        assert!(dir.read_spec().is_err());
        assert_eq!(dir.console_len(), 0);
        assert_eq!(dir.disk_allocated_bytes(), 0);
    }

    #[test]
    fn keeping_the_disk_removes_the_rest() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = VmDir::new(tmp.path().join("vm"));
        std::fs::create_dir_all(dir.dir().join("sub")).expect("mkdir");
        std::fs::write(dir.disk(), b"disk").expect("disk");
        dir.write_state(&CoreStatus::defined()).expect("state");
        assert_eq!(dir.disk_path(), dir.disk());
        dir.remove_all_but_disk().expect("remove");
        let left: Vec<_> = std::fs::read_dir(dir.dir())
            .expect("list")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("disk.qcow2")]);
        // A link to a shared disk is not a disk of its own: all goes, the target stays.
        let shared = tmp.path().join("shared.qcow2");
        std::fs::rename(dir.disk(), &shared).expect("move");
        std::os::unix::fs::symlink(&shared, dir.disk()).expect("link");
        assert_eq!(dir.disk_path(), shared);
        dir.remove_all_but_disk().expect("remove");
        assert!(!dir.dir().exists() && shared.is_file());
    }
}
