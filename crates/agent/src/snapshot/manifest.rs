//! A snapshot's manifest: `vms/<id>/snapshots/<sid>/manifest.json`.
//!
//! It names everything a restore needs and how to check it: the format version, the VM spec
//! at the time, the disk layer frozen at that instant (path, size, BLAKE3 of the file) and,
//! for a memory snapshot, the chunks of the memory image. A restore validates all of it
//! before it touches the VM. Written last, through a rename: a snapshot without a manifest
//! never completed. While a snapshot is being taken, `pending.json` names its disk layer, so
//! that the undo of a failed snapshot finds it.

use super::chunks::ChunkedImage;
use crate::error::{Error, Result};
use crate::instance::files::{read_json, write_json, VmDir};
use chrono::{DateTime, Utc};
use nimbus_agent_api::{SnapshotResult, VmSpec};
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::{Path, PathBuf};
use uuid::Uuid;

/// The manifest format this agent writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// The disk as of the snapshot: a qcow2 layer that no longer changes (see [`super::layers`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiskLayer {
    pub path: PathBuf,
    pub virtual_size: u64,
    /// BLAKE3 of the layer file, hex. Updated when the layer is rebased (the guest-visible
    /// content stays; the file changes).
    pub hash: String,
}

/// Everything about one snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub snapshot_id: Uuid,
    pub vm_id: Uuid,
    pub created_at: DateTime<Utc>,
    /// QEMU version that wrote the memory image.
    pub qemu_version: String,
    pub spec: VmSpec,
    pub disk: DiskLayer,
    /// QEMU's migration stream of the background snapshot, as chunks.
    pub memory: Option<ChunkedImage>,
    pub result: SnapshotResult,
}

/// What `pending.json` records while a snapshot is taken.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    pub layer: PathBuf,
}

/// The files of one snapshot of one VM.
#[derive(Debug, Clone)]
pub struct SnapshotFiles {
    dir: PathBuf,
}

impl SnapshotFiles {
    pub fn new(vm: &VmDir, sid: Uuid) -> Self {
        Self {
            dir: vm.snapshots_dir().join(sid.to_string()),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn manifest_file(&self) -> PathBuf {
        self.dir.join("manifest.json")
    }

    pub fn pending_file(&self) -> PathBuf {
        self.dir.join("pending.json")
    }

    /// Where QEMU writes the memory stream before it is cut into chunks.
    pub fn stream_file(&self) -> PathBuf {
        self.dir.join("memory.stream")
    }

    /// Where a restore assembles the memory stream.
    pub fn restore_stream_file(&self) -> PathBuf {
        self.dir.join("restore.stream")
    }

    pub fn read(&self) -> Result<Option<Manifest>> {
        match read_json::<serde_json::Value>(&self.manifest_file())? {
            None => Ok(None),
            Some(v) => {
                let version = v.get("format_version").and_then(|x| x.as_u64());
                if version != Some(u64::from(FORMAT_VERSION)) {
                    return Err(Error::Conflict(format!(
                        "snapshot manifest {} has format version {version:?}; this agent reads \
                         version {FORMAT_VERSION} (upgrade the agent)",
                        self.manifest_file().display()
                    )));
                }
                serde_json::from_value(v).map(Some).map_err(|e| {
                    Error::Conflict(format!(
                        "snapshot manifest {} is damaged: {e}",
                        self.manifest_file().display()
                    ))
                })
            }
        }
    }

    pub fn write(&self, manifest: &Manifest) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(Error::io("create", &self.dir))?;
        write_json(&self.manifest_file(), manifest)
    }

    pub fn read_pending(&self) -> Result<Option<Pending>> {
        read_json(&self.pending_file())
    }

    pub fn write_pending(&self, pending: &Pending) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(Error::io("create", &self.dir))?;
        write_json(&self.pending_file(), pending)
    }

    /// The snapshot's disk layer, from the manifest or, for one being taken, `pending.json`.
    pub fn layer(&self) -> Result<Option<PathBuf>> {
        if let Some(m) = self.read()? {
            return Ok(Some(m.disk.path));
        }
        Ok(self.read_pending()?.map(|p| p.layer))
    }

    pub fn remove(&self) -> Result<()> {
        match std::fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::io("remove", &self.dir)(e))
            }
            _ => Ok(()),
        }
    }
}

/// The snapshots of the VM in `vm`, by id (complete or not).
fn snapshot_ids(vm: &VmDir) -> Vec<Uuid> {
    let Ok(entries) = std::fs::read_dir(vm.snapshots_dir()) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<Uuid>().ok())
        .collect()
}

/// Every manifest of the VM in `vm`.
pub fn all(vm: &VmDir) -> Result<Vec<Manifest>> {
    let mut out = Vec::new();
    for sid in snapshot_ids(vm) {
        if let Some(m) = SnapshotFiles::new(vm, sid).read()? {
            out.push(m);
        }
    }
    Ok(out)
}

/// What metering needs of a manifest, read without building its chunk list.
#[derive(Debug, Clone, Deserialize)]
pub struct Summary {
    pub format_version: u32,
    pub disk: DiskLayer,
    pub result: SnapshotResult,
}

/// The summaries of every readable manifest of the VM in `vm` (unreadable ones are skipped:
/// a restore reports them).
pub fn summaries(vm: &VmDir) -> Vec<Summary> {
    snapshot_ids(vm)
        .into_iter()
        .filter_map(|sid| {
            read_json::<Summary>(&SnapshotFiles::new(vm, sid).manifest_file()).ok()?
        })
        .filter(|s| s.format_version == FORMAT_VERSION)
        .collect()
}

/// BLAKE3 of a file, hex.
pub fn hash_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).map_err(Error::io("open", path))?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(Error::io("read", path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().to_hex().to_string())
}

impl Manifest {
    /// Checks the disk layer against its checksum (the memory chunks are checked when they
    /// are assembled). Refuses with what is wrong, naming the file.
    pub fn check_disk(&self) -> Result<()> {
        let path = &self.disk.path;
        if !path.is_file() {
            return Err(Error::Conflict(format!(
                "the disk layer {} of snapshot {} is missing",
                path.display(),
                self.snapshot_id
            )));
        }
        if hash_file(path)? != self.disk.hash {
            return Err(Error::Conflict(format!(
                "the disk layer {} of snapshot {} is damaged: it does not match its checksum",
                path.display(),
                self.snapshot_id
            )));
        }
        Ok(())
    }
}
