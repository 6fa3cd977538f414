//! The memory chunks of the replica store, in pack files (`nimbus-packs`, the format the
//! agents store their snapshots' memory in): appended, indexed, checked on every read, an
//! index rebuilt from its pack after a crash, packs rewritten with their live records when
//! chunks are swept. One file per chunk was tens of thousands of files per 512 MiB guest.
//!
//! Replicas written before packs (`chunks/<aa>/<blake3>`, a flags byte then the data) are
//! converted when the store opens: each chunk checked against its name and appended, the packs
//! made durable, and only then the old files removed (a crash in between converts again; an
//! append of a chunk already packed is a no-op). A damaged old chunk is dropped with a
//! warning: the replicas naming it are incomplete, and a copy from another controller (or
//! the next replication from the host) brings it again.

use super::receive::check_chunk;
use super::{is_chunk_name, ReplicaError};
use nimbus_packs::{record, PackError, PackStore};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// The directory of the packs, under the store's root.
const PACKS: &str = "packs";
/// The directory of chunks of the first layout, under the store's root.
const FIRST_LAYOUT: &str = "chunks";

/// The chunks of a replica store.
#[derive(Debug, Clone)]
pub struct ReplicaChunks {
    packs: PackStore,
}

fn pack_error(e: PackError) -> ReplicaError {
    match e {
        PackError::Damaged(m) => ReplicaError::Damaged(m),
        PackError::Io {
            action,
            path,
            source,
        } => ReplicaError::Io {
            what: action,
            path,
            source,
        },
        PackError::Internal(m) => ReplicaError::Damaged(m),
    }
}

impl ReplicaChunks {
    /// The chunks under `root`, converting those of the first layout.
    pub fn open(root: &Path) -> std::io::Result<Self> {
        let chunks = Self {
            packs: PackStore::new(root.join(PACKS)),
        };
        chunks
            .convert_first_layout(&root.join(FIRST_LAYOUT))
            .map_err(std::io::Error::other)?;
        Ok(chunks)
    }

    /// The packs (for tests that damage one).
    pub fn packs(&self) -> &PackStore {
        &self.packs
    }

    /// Whether chunk `hash` (hex) is stored.
    pub fn has(&self, hash: &str) -> bool {
        record::digest_bytes(hash)
            .and_then(|d| self.packs.contains(&d).ok())
            .unwrap_or(false)
    }

    /// Checks chunk `hash` as received (zstd or raw) against its name and appends it unless
    /// stored. Buffered: durable and readable after [`Self::sync`].
    pub fn put(&self, hash: &str, zstd: bool, data: &[u8]) -> Result<(), ReplicaError> {
        let raw_len = check_chunk(hash, zstd, data)?;
        let digest = record::digest_bytes(hash)
            .ok_or_else(|| ReplicaError::Refused(format!("{hash:?} is not a chunk name")))?;
        let flags = if zstd { record::ZSTD } else { 0 };
        self.packs
            .append_stored(&digest, flags, data, raw_len)
            .map_err(pack_error)?;
        Ok(())
    }

    /// Makes what was appended durable (blocking: file syncs).
    pub async fn sync(&self) -> Result<(), ReplicaError> {
        let packs = self.packs.clone();
        tokio::task::spawn_blocking(move || packs.sync())
            .await
            .map_err(|e| ReplicaError::Damaged(format!("syncing the packs failed: {e}")))?
            .map_err(pack_error)
    }

    /// The frames of the chunks `hashes` (header and data as stored), read from the packs
    /// (blocking: file reads). Their content is checked by the receiver, which trusts no
    /// sender; the record's header is checked against the index here.
    pub async fn frames(&self, hashes: Vec<String>) -> Result<Vec<u8>, ReplicaError> {
        let packs = self.packs.clone();
        tokio::task::spawn_blocking(move || read_frames(&packs, &hashes))
            .await
            .map_err(|e| ReplicaError::Damaged(format!("reading the packs failed: {e}")))?
    }

    /// Removes every chunk not in `keep` (blocking: packs are rewritten); answers the bytes
    /// freed. The caller keeps appends out meanwhile.
    pub async fn sweep(&self, keep: HashSet<String>) -> Result<u64, ReplicaError> {
        let packs = self.packs.clone();
        tokio::task::spawn_blocking(move || packs.collect_garbage(&keep))
            .await
            .map_err(|e| ReplicaError::Damaged(format!("sweeping the packs failed: {e}")))?
            .map_err(pack_error)
    }

    /// Moves the chunks of the first layout under `dir` into the packs.
    fn convert_first_layout(&self, dir: &Path) -> Result<(), ReplicaError> {
        let files = first_layout_files(dir);
        if files.is_empty() {
            let _ = std::fs::remove_dir_all(dir);
            return Ok(());
        }
        let started = std::time::Instant::now();
        let mut dropped = 0;
        for (hash, path) in &files {
            let stored = std::fs::read(path).map_err(super::io("read", path))?;
            let put = match stored.split_first() {
                Some((flags, data)) => self.put(hash, flags & record::ZSTD != 0, data),
                None => Err(ReplicaError::Refused(format!("chunk {hash} is empty"))),
            };
            if let Err(e) = put {
                tracing::warn!(chunk = %hash, error = %e, "a replica chunk of the first layout is damaged: dropped");
                dropped += 1;
            }
        }
        self.packs.sync().map_err(pack_error)?;
        std::fs::remove_dir_all(dir).map_err(super::io("remove", dir))?;
        tracing::info!(
            chunks = files.len(),
            dropped,
            ms = started.elapsed().as_millis() as u64,
            "replica chunks of the first layout moved into packs"
        );
        Ok(())
    }
}

/// The chunk files of the first layout: `<dir>/<aa>/<blake3>`.
fn first_layout_files(dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(fans) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files = Vec::new();
    for fan in fans.filter_map(|e| e.ok()) {
        let Ok(entries) = std::fs::read_dir(fan.path()) else {
            continue;
        };
        for e in entries.filter_map(|e| e.ok()) {
            if let Some(hash) = e.file_name().to_str().filter(|n| is_chunk_name(n)) {
                files.push((hash.to_string(), e.path()));
            }
        }
    }
    files
}

fn read_frames(packs: &PackStore, hashes: &[String]) -> Result<Vec<u8>, ReplicaError> {
    use nimbus_agent_api::snapshot_move::frame::{encode_header, Header};
    let mut reader = packs.reader();
    let mut frames = Vec::new();
    for hash in hashes {
        let stored = record::digest_bytes(hash)
            .map(|d| reader.read_stored(&d, hash))
            .transpose()
            .map_err(pack_error)?
            .flatten();
        let Some((flags, data)) = stored else {
            return Err(ReplicaError::Damaged(format!(
                "memory chunk {hash} is not in the replica store"
            )));
        };
        let header = Header::Chunk {
            hash: hash.clone(),
            zstd: flags & record::ZSTD != 0,
        };
        frames.extend_from_slice(&encode_header(&header, data.len() as u64));
        frames.extend_from_slice(&data);
    }
    Ok(frames)
}

#[cfg(test)]
mod tests;
