//! The controller's replicas of snapshots (issue 14, part 4): the data an HA restart needs to
//! restore an instance whose disk was local to a host that died. Content-addressed, beside
//! the image blobs agents already fetch from the controller:
//!
//! ```text
//! <data_dir>/replicas/packs/<n>.pack, <n>.idx        memory chunks, in packs as the agents
//!                                                     store them (see [`chunks`])
//! <data_dir>/replicas/vms/<vm>/layers/<name>          a frozen disk layer (disk.qcow2 or
//! <data_dir>/replicas/vms/<vm>/layers/<name>.json     <uuid>.qcow2) and {backing, digest}
//! <data_dir>/replicas/vms/<vm>/snapshots/<sid>.json   a snapshot's manifest (written last)
//! <data_dir>/replicas/incoming/<uuid>/                a replication being received: removed
//!                                                     on any failure, and all at start
//! ```
//!
//! - Chunks are shared by every replica (named by BLAKE3), as packs share them on a host; a
//!   replication asks the host only for the chunks the store lacks and for the layers of the
//!   VM it does not hold yet (frozen layers keep their guest-visible content: when the host
//!   merges a deleted snapshot's layer into a child, the replica keeps the old pair, which
//!   shows the guest the same disk).
//! - Nothing is half visible: every frame of a stream is checked (chunk content against its
//!   name, layer against its digest, manifest of this VM and naming a layer); chunks are
//!   appended to the packs as they come (a chunk no manifest names is no replica; a failed
//!   stream's chunks serve its retry, or go at the next sweep), layers and manifests are
//!   staged in `incoming/` and moved in after the packs are durable, manifests last; a
//!   manifest is kept only when its whole layer chain and every chunk it names are stored.
//! - Deleting: a mark-and-sweep from the snapshots the database still has
//!   ([`ReplicaStore::sweep`]): manifests of deleted snapshots go, then layers no remaining
//!   manifest's chain uses, then chunks no remaining manifest names.
//! - One lock serialises commits and sweeps, and a sweep waits for the streams being
//!   received, so it never takes a chunk a commit is about to reference.

pub mod chunks;
pub mod receive;
pub mod send;

use chunks::ReplicaChunks;

use nimbus_agent_api::snapshot_move::{ExportSnapshotSet, SnapshotSetPart};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use uuid::Uuid;

/// Why the replica store failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error("the replica store cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The stream from the host is not a valid snapshot set (or was cut short).
    #[error("the snapshot set from the host was refused: {0}")]
    Refused(String),
    /// The store's own files are damaged (refused, never served).
    #[error("the replica store is damaged: {0}")]
    Damaged(String),
    /// The replica lacks what a restart needs.
    #[error("the replica of snapshot {0} is incomplete: {1}")]
    Incomplete(Uuid, String),
}

pub(crate) fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ReplicaError {
    let path = path.to_path_buf();
    move |source| ReplicaError::Io { what, path, source }
}

pub use nimbus_agent_api::snapshot_move::frame::{is_layer_name, ROOT_LAYER};

/// A BLAKE3 name: 64 lowercase hex digits.
pub fn is_chunk_name(hash: &str) -> bool {
    hash.len() == 64 && hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// What the store knows of a layer besides its bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerMeta {
    /// The layer it stands on (`None`: the first, on the image's base).
    pub backing: Option<String>,
    /// BLAKE3 of the file, hex.
    pub digest: String,
    pub bytes: u64,
}

/// What a restart needs of a manifest (the rest travels as it is).
#[derive(Debug, Clone, PartialEq)]
pub struct ManifestRefs {
    pub snapshot_id: Uuid,
    pub vm_id: Uuid,
    /// Its layer's name.
    pub layer: String,
    /// The chunks of its memory image (none for a disk-only snapshot).
    pub chunks: Vec<String>,
}

impl ManifestRefs {
    /// Reads what a manifest references, refusing one that names anything but a layer name
    /// and chunk names (a hostile host cannot make the store touch another path).
    pub fn parse(json: &[u8]) -> Result<Self, ReplicaError> {
        let bad = |what: &str| ReplicaError::Refused(format!("a manifest {what}"));
        let v: serde_json::Value =
            serde_json::from_slice(json).map_err(|e| bad(&format!("is not JSON: {e}")))?;
        let uuid = |key: &str| {
            v.get(key)
                .and_then(|x| x.as_str())
                .and_then(|s| Uuid::parse_str(s).ok())
                .ok_or_else(|| bad(&format!("has no {key}")))
        };
        let layer = v
            .pointer("/disk/path")
            .and_then(|x| x.as_str())
            .filter(|n| is_layer_name(n))
            .ok_or_else(|| bad("names no disk layer"))?
            .to_string();
        let mut chunks = Vec::new();
        if let Some(list) = v.pointer("/memory/chunks").and_then(|x| x.as_array()) {
            for c in list {
                let hash = c
                    .get("hash")
                    .and_then(|h| h.as_str())
                    .filter(|h| is_chunk_name(h))
                    .ok_or_else(|| bad("names a chunk that is not a BLAKE3 digest"))?;
                chunks.push(hash.to_string());
            }
        }
        Ok(Self {
            snapshot_id: uuid("snapshot_id")?,
            vm_id: uuid("vm_id")?,
            layer,
            chunks,
        })
    }
}

/// The replicas of snapshots, under `<data_dir>/replicas`.
#[derive(Debug)]
pub struct ReplicaStore {
    root: PathBuf,
    chunks: ReplicaChunks,
    lock: tokio::sync::Mutex<()>,
    /// Held (shared) by every stream being received, (exclusive) by a sweep: taken before
    /// `lock`.
    receiving: tokio::sync::RwLock<()>,
    /// Held while a replica is copied from another controller, so that the copy pass and a
    /// restart needing the same replica make one copy (see `app::replica_copies`).
    copying: tokio::sync::Mutex<()>,
}

impl ReplicaStore {
    /// Opens (creating) the store, removing replications a crash left half received.
    pub fn open(data_dir: &Path) -> std::io::Result<Self> {
        let root = data_dir.join("replicas");
        let incoming = root.join("incoming");
        match std::fs::remove_dir_all(&incoming) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        std::fs::create_dir_all(&incoming)?;
        std::fs::create_dir_all(root.join("vms"))?;
        Ok(Self {
            chunks: ReplicaChunks::open(&root)?,
            root,
            lock: tokio::sync::Mutex::new(()),
            receiving: tokio::sync::RwLock::new(()),
            copying: tokio::sync::Mutex::new(()),
        })
    }

    /// Held while a replica is copied from another controller.
    pub async fn copy_guard(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.copying.lock().await
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn incoming_dir(&self) -> PathBuf {
        self.root.join("incoming")
    }

    /// The memory chunks.
    pub fn chunks(&self) -> &ReplicaChunks {
        &self.chunks
    }

    fn vm_dir(&self, vm: Uuid) -> PathBuf {
        self.root.join("vms").join(vm.to_string())
    }

    pub fn layer_path(&self, vm: Uuid, name: &str) -> PathBuf {
        self.vm_dir(vm).join("layers").join(name)
    }

    fn layer_meta_path(&self, vm: Uuid, name: &str) -> PathBuf {
        self.vm_dir(vm).join("layers").join(format!("{name}.json"))
    }

    pub fn manifest_path(&self, vm: Uuid, sid: Uuid) -> PathBuf {
        self.vm_dir(vm)
            .join("snapshots")
            .join(format!("{sid}.json"))
    }

    /// The chunks of `wanted` the store lacks.
    pub fn missing_chunks(&self, wanted: &[String]) -> Vec<String> {
        wanted
            .iter()
            .filter(|h| !is_chunk_name(h) || !self.chunks.has(h))
            .cloned()
            .collect()
    }

    /// What to ask a sender (a host, another controller) for of the set of VM `vm` whose
    /// chunks are `inventory`: the chunks the store lacks, the layers but those it holds.
    pub fn wanted(&self, vm: Uuid, inventory: &[String]) -> ExportSnapshotSet {
        ExportSnapshotSet {
            part: SnapshotSetPart::All,
            chunks: self.missing_chunks(inventory),
            layers: true,
            live: true,
            skip_layers: self.layer_names(vm),
        }
    }

    /// The layers of VM `vm` the store holds (by name).
    pub fn layer_names(&self, vm: Uuid) -> Vec<String> {
        let dir = self.vm_dir(vm).join("layers");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|n| is_layer_name(n) && dir.join(format!("{n}.json")).is_file())
            .collect()
    }

    pub fn layer_meta(&self, vm: Uuid, name: &str) -> Option<LayerMeta> {
        let bytes = std::fs::read(self.layer_meta_path(vm, name)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// The snapshots of VM `vm` with a manifest in the store.
    pub fn snapshots_of(&self, vm: Uuid) -> Vec<Uuid> {
        let Ok(entries) = std::fs::read_dir(self.vm_dir(vm).join("snapshots")) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name();
                let stem = name.to_str()?.strip_suffix(".json")?;
                Uuid::parse_str(stem).ok()
            })
            .collect()
    }

    /// The manifest of snapshot `sid` of `vm`, as stored, and what it references.
    pub fn manifest(&self, vm: Uuid, sid: Uuid) -> Result<(Vec<u8>, ManifestRefs), ReplicaError> {
        let path = self.manifest_path(vm, sid);
        let json = std::fs::read(&path).map_err(io("read", &path))?;
        let refs = ManifestRefs::parse(&json)?;
        Ok((json, refs))
    }

    /// The chain of layers under (and including) `layer`, top first, if all are stored.
    pub fn chain(&self, vm: Uuid, layer: &str) -> Result<Vec<(String, LayerMeta)>, String> {
        let mut chain = Vec::new();
        let mut next = Some(layer.to_string());
        while let Some(name) = next {
            if chain.iter().any(|(n, _)| n == &name) || chain.len() > 4096 {
                return Err(format!("the layers under {layer} form a loop"));
            }
            let meta = self
                .layer_meta(vm, &name)
                .filter(|_| self.layer_path(vm, &name).is_file())
                .ok_or_else(|| format!("its disk layer {name} is not in the store"))?;
            next = meta.backing.clone();
            chain.push((name, meta));
        }
        Ok(chain)
    }

    /// Mark and sweep: manifests of snapshots not in `live` go, then the layers no
    /// remaining manifest's chain uses, then the chunks no remaining manifest names.
    /// Answers the bytes freed.
    /// `live` is read under the store's lock (`None`: unknown, nothing is swept), so that a
    /// replica committed meanwhile is of a snapshot it names.
    pub async fn sweep<F>(&self, live: F) -> Result<u64, ReplicaError>
    where
        F: std::future::Future<Output = Option<BTreeSet<Uuid>>>,
    {
        let _no_stream = self.receiving.write().await;
        let _serial = self.lock.lock().await;
        let Some(live) = live.await else {
            return Ok(0);
        };
        // Runs only after a snapshot was deleted (and once at start).
        let (freed, chunks_used) = self.sweep_files(&live)?;
        Ok(freed + self.chunks.sweep(chunks_used.into_iter().collect()).await?)
    }

    /// Sweeps manifests and layers; answers the bytes freed and the chunks still used.
    fn sweep_files(&self, live: &BTreeSet<Uuid>) -> Result<(u64, BTreeSet<String>), ReplicaError> {
        let mut freed = 0;
        let mut chunks_used = BTreeSet::new();
        let vms_dir = self.root.join("vms");
        let vms = std::fs::read_dir(&vms_dir).map_err(io("list", &vms_dir))?;
        for entry in vms.filter_map(|e| e.ok()) {
            let Some(vm) = entry
                .file_name()
                .to_str()
                .and_then(|s| Uuid::parse_str(s).ok())
            else {
                continue;
            };
            let mut layers_used = BTreeSet::new();
            for sid in self.snapshots_of(vm) {
                let path = self.manifest_path(vm, sid);
                let refs = if live.contains(&sid) {
                    self.manifest(vm, sid).ok().map(|(_, r)| r)
                } else {
                    None
                };
                let Some(refs) = refs else {
                    freed += remove_file(&path)?;
                    continue;
                };
                if let Ok(chain) = self.chain(vm, &refs.layer) {
                    layers_used.extend(chain.into_iter().map(|(n, _)| n));
                }
                chunks_used.extend(refs.chunks);
            }
            for name in self.layer_names(vm) {
                if !layers_used.contains(&name) {
                    freed += remove_file(&self.layer_path(vm, &name))?;
                    freed += remove_file(&self.layer_meta_path(vm, &name))?;
                }
            }
            if layers_used.is_empty() {
                let dir = self.vm_dir(vm);
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
        Ok((freed, chunks_used))
    }
}

/// Removes a file; answers its size (0 if it was gone already).
fn remove_file(path: &Path) -> Result<u64, ReplicaError> {
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    match std::fs::remove_file(path) {
        Ok(()) => Ok(size),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(io("remove", path)(e)),
    }
}

#[cfg(test)]
mod tests;
