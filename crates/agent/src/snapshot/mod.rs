//! Checkpoints of VMs on this host: copy-on-write snapshots of CPU, memory and disk.
//!
//! - [`layers`]: the disk as a tree of qcow2 layers; a snapshot freezes the top layer.
//! - [`memory`]: QEMU's background snapshot (a pause of milliseconds) and memory load.
//! - [`chunks`]: memory images stored as content-defined, content-addressed chunks shared by
//!   every snapshot on the host, so a snapshot of a guest that changed little costs little.
//! - [`manifest`]: what a snapshot is made of, with checksums, validated before a restore.
//! - [`follow`]: a memory image read while QEMU writes it, so chunking overlaps the write.
//! - [`take`], [`restore`], [`delete`], [`clone`]: the operations.
//!
//! ```text
//! <state_dir>/chunks/packs/<n>.pack, <n>.idx   memory chunks (host-wide), in packs
//! <state_dir>/chunks/<aa>/<blake3>            memory chunks of the first layout (still read)
//! <state_dir>/vms/<id>/snapshots/<sid>/       manifest.json (pending.json while taken)
//! <disk dir>/layers/<uuid>.qcow2              disk layers
//! <state_dir>/arriving/<id>/                   snapshots of a VM moving here, staged
//! <state_dir>/arriving/<id>.memory/            their memory part, when it comes apart
//! ```
//! - [`moving`]: a VM's snapshots sent to and received from another host when it migrates.

pub mod chunks;
pub mod clone;
pub mod delete;
pub mod failpoint;
pub mod follow;
pub mod layers;
pub mod manifest;
pub mod memory;
pub mod moving;
pub mod restore;
pub mod take;

/// The pack format, shared with the controller's replicas (crates/packs).
pub use nimbus_packs as packs;

use crate::error::{Error, Result};
use crate::instance::files::VmDir;
use chunks::{ChunkStore, ChunkedImage, Stored};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The host's snapshot storage. Adding chunks and collecting garbage are serialised, so a
/// collection never removes a chunk that a snapshot being written has just reused.
#[derive(Clone)]
pub struct SnapshotStore {
    chunks: ChunkStore,
    vms_dir: PathBuf,
    arriving_dir: PathBuf,
    state_dir: PathBuf,
    writers: Arc<tokio::sync::Mutex<()>>,
}

impl SnapshotStore {
    /// The store of the agent whose state directory is `state_dir`.
    pub fn new(state_dir: &Path) -> Self {
        Self {
            chunks: ChunkStore::new(state_dir.join("chunks")),
            vms_dir: state_dir.join("vms"),
            arriving_dir: state_dir.join("arriving"),
            state_dir: state_dir.to_path_buf(),
            writers: Arc::default(),
        }
    }

    /// Cuts a memory image into chunks and stores the new ones.
    pub async fn put_image(&self, image: &Path) -> Result<(ChunkedImage, Stored)> {
        let _one = self.writers.lock().await;
        let chunks = self.chunks.clone();
        let image = image.to_path_buf();
        blocking(move || chunks.put_file(&image)).await
    }

    /// Cuts a memory image into chunks and stores the new ones as QEMU writes it, until
    /// `reader`'s signal says the image is complete (see [`follow`]).
    pub async fn put_following(
        &self,
        reader: follow::Following,
        image: &Path,
    ) -> Result<(ChunkedImage, Stored)> {
        let _one = self.writers.lock().await;
        let chunks = self.chunks.clone();
        let image = image.to_path_buf();
        blocking(move || chunks.put_stream(reader, &image)).await
    }

    /// Checks that every chunk of `image` is there (not their content).
    pub fn check_image(&self, image: &ChunkedImage) -> Result<()> {
        self.chunks.check(image)
    }

    /// Writes a stored memory image to `out`, verifying its checksums.
    pub async fn assemble(&self, image: &ChunkedImage, out: &Path) -> Result<()> {
        let chunks = self.chunks.clone();
        let (image, out) = (image.clone(), out.to_path_buf());
        blocking(move || chunks.assemble(&image, &out)).await
    }

    /// Removes the chunks no snapshot on this host uses any more; returns the bytes freed.
    pub async fn collect_garbage(&self) -> Result<u64> {
        let _one = self.writers.lock().await;
        let keep = self.referenced_chunks()?;
        let chunks = self.chunks.clone();
        blocking(move || chunks.collect_garbage(&keep)).await
    }

    /// Chunks used by a snapshot of a VM here, or of a VM arriving (staged).
    fn referenced_chunks(&self) -> Result<HashSet<String>> {
        let mut keep = HashSet::new();
        for root in [&self.vms_dir, &self.arriving_dir] {
            let Ok(vms) = std::fs::read_dir(root) else {
                continue;
            };
            for vm in vms.flatten() {
                for m in manifest::all(&VmDir::new(vm.path()))? {
                    if let Some(image) = m.memory {
                        keep.extend(image.chunks.into_iter().map(|c| c.hash));
                    }
                }
            }
        }
        Ok(keep)
    }

    /// The chunk store (for moving snapshots between hosts).
    pub fn chunks(&self) -> &ChunkStore {
        &self.chunks
    }

    /// Where the snapshots of VM `id`, arriving from another host, are staged.
    pub fn arriving(&self, id: uuid::Uuid) -> moving::Arriving {
        moving::Arriving::new(self.arriving_dir.join(id.to_string()))
    }

    /// Where the memory part of a live move of VM `id` (manifests; the chunks go into the
    /// store) is staged: apart from the disk part, as the two arrive side by side.
    pub fn arriving_memory(&self, id: uuid::Uuid) -> moving::Arriving {
        moving::Arriving::new(self.arriving_dir.join(format!("{id}.memory")))
    }

    /// The staging of `part` of VM `id`'s snapshot set.
    pub fn arriving_part(
        &self,
        id: uuid::Uuid,
        part: nimbus_agent_api::SnapshotSetPart,
    ) -> moving::Arriving {
        match part {
            nimbus_agent_api::SnapshotSetPart::Memory => self.arriving_memory(id),
            _ => self.arriving(id),
        }
    }

    /// Removes every staged part of VM `id`'s snapshot set; true when there was one.
    pub fn remove_arriving(&self, id: uuid::Uuid) -> Result<bool> {
        let disk = self.arriving(id).remove()?;
        Ok(self.arriving_memory(id).remove()? || disk)
    }

    /// Serialises a writer of chunks with garbage collection (see the type's doc).
    pub async fn writer(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.writers.lock().await
    }

    /// The agent's state directory (test failure points are read from it).
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }
}

/// Bytes the snapshots of the VM in `vm` hold on this host, as metered: each snapshot's disk
/// layer as it is now plus the memory chunks it added when taken (chunks shared with a later
/// snapshot stay with the one that stored them first).
pub fn stored_bytes_of(vm: &VmDir) -> u64 {
    manifest::summaries(vm)
        .iter()
        .map(|m| layers::allocated_bytes(&m.disk.path) + m.result.memory_new_bytes)
        .sum()
}

/// Runs file work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::Internal(format!("snapshot file work failed: {e}")))?
}
