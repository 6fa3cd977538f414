//! Receiving a snapshot set from an instance's host into the replica store (see the module
//! doc of [`super`]): staged, every frame checked, then moved in with manifests last.

use super::{
    io, is_chunk_name, is_layer_name, LayerMeta, ManifestRefs, ReplicaError, ReplicaStore,
};
use nimbus_agent_api::snapshot_move::frame::{read_data, read_header, FrameError, Header};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

/// Largest chunk accepted, stored or raw (content-defined chunks average 8 KiB; a bound
/// against a hostile stream, not a product limit).
pub const MAX_CHUNK: u64 = 4 << 20;
/// Largest manifest accepted (as the agents bound it).
pub const MAX_MANIFEST: u64 = 256 << 20;

/// What a replication brought in.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Received {
    /// Snapshots whose replica is now complete in the store.
    pub snapshots: Vec<Uuid>,
    pub layers: u32,
    pub layer_bytes: u64,
    pub chunks: u64,
    pub chunk_bytes: u64,
}

impl Received {
    /// Bytes of data received (layers and chunks as sent).
    pub fn bytes(&self) -> u64 {
        self.layer_bytes + self.chunk_bytes
    }
}

/// A replication being received: its directory goes when this is dropped (after a commit
/// it is empty; after a failure nothing of it was visible).
struct Staging {
    dir: PathBuf,
}

impl Staging {
    fn layer(&self, name: &str) -> PathBuf {
        self.dir.join("layers").join(name)
    }
    fn layer_meta(&self, name: &str) -> PathBuf {
        self.dir.join("layers").join(format!("{name}.json"))
    }
    fn manifest(&self, sid: Uuid) -> PathBuf {
        self.dir.join("snapshots").join(format!("{sid}.json"))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot remove a replication's staging directory");
            }
        }
    }
}

fn refused(e: FrameError) -> ReplicaError {
    ReplicaError::Refused(e.to_string())
}

/// Checks a chunk as stored (zstd or raw) against its name; answers its raw length.
pub fn check_chunk(hash: &str, zstd: bool, data: &[u8]) -> Result<u32, ReplicaError> {
    if !is_chunk_name(hash) {
        return Err(ReplicaError::Refused(format!(
            "{hash:?} is not a chunk name"
        )));
    }
    let raw = if zstd {
        zstd::bulk::decompress(data, MAX_CHUNK as usize).map_err(|e| {
            ReplicaError::Refused(format!("memory chunk {hash} does not decompress: {e}"))
        })?
    } else {
        data.to_vec()
    };
    if blake3::hash(&raw).to_hex().as_str() != hash {
        return Err(ReplicaError::Refused(format!(
            "memory chunk {hash} is damaged: its content does not match its checksum"
        )));
    }
    Ok(raw.len() as u32)
}

async fn write_file(path: &Path, parts: &[&[u8]]) -> Result<(), ReplicaError> {
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(io("create", dir))?;
    }
    let mut f = tokio::fs::File::create(path)
        .await
        .map_err(io("create", path))?;
    for p in parts {
        f.write_all(p).await.map_err(io("write", path))?;
    }
    f.flush().await.map_err(io("write", path))
}

/// Copies `len` bytes of `r` into `path`; answers their BLAKE3.
async fn receive_layer<R: AsyncRead + Unpin>(
    r: &mut R,
    len: u64,
    path: &Path,
) -> Result<String, ReplicaError> {
    write_file(path, &[]).await?;
    let mut f = tokio::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .await
        .map_err(io("open", path))?;
    let mut hasher = blake3::Hasher::new();
    let mut left = len;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        r.read_exact(&mut buf[..want])
            .await
            .map_err(|e| refused(FrameError::Broken(e)))?;
        hasher.update(&buf[..want]);
        f.write_all(&buf[..want]).await.map_err(io("write", path))?;
        left -= want as u64;
    }
    f.sync_all().await.map_err(io("sync", path))?;
    Ok(hasher.finalize().to_hex().to_string())
}

impl ReplicaStore {
    /// Receives the snapshot set of VM `vm` from `r` (the frames of an agent's export) and
    /// moves what is complete into the store. On any error nothing of it is kept.
    pub async fn receive<R: AsyncRead + Unpin>(
        &self,
        vm: Uuid,
        r: &mut R,
    ) -> Result<Received, ReplicaError> {
        // Chunks go to the packs as they come: no sweep until this stream is done.
        let _streaming = self.receiving.read().await;
        let staging = Staging {
            dir: self.incoming_dir().join(Uuid::new_v4().to_string()),
        };
        let mut got = Received::default();
        let mut manifests = Vec::new();
        loop {
            let (header, len) = read_header(r).await.map_err(refused)?;
            match header {
                Header::Chunk { hash, zstd } => {
                    let data = read_data(r, len, MAX_CHUNK).await.map_err(refused)?;
                    self.chunks.put(&hash, zstd, &data)?;
                    got.chunks += 1;
                    got.chunk_bytes += len;
                }
                Header::Layer {
                    name,
                    backing,
                    digest,
                } => {
                    let names_ok = is_layer_name(&name)
                        && backing.as_deref().is_none_or(is_layer_name)
                        && (backing.is_some() || name == super::ROOT_LAYER);
                    if !names_ok {
                        return Err(ReplicaError::Refused(format!(
                            "layer {name:?} on {backing:?} is not a layer of a VM"
                        )));
                    }
                    let path = staging.layer(&name);
                    let got_digest = receive_layer(r, len, &path).await?;
                    if got_digest != digest {
                        return Err(ReplicaError::Refused(format!(
                            "disk layer {name} is damaged: its content does not match its checksum"
                        )));
                    }
                    let meta = LayerMeta {
                        backing,
                        digest,
                        bytes: len,
                    };
                    let json = serde_json::to_vec(&meta).unwrap_or_default();
                    write_file(&staging.layer_meta(&name), &[&json]).await?;
                    got.layers += 1;
                    got.layer_bytes += len;
                }
                Header::Manifest => {
                    let json = read_data(r, len, MAX_MANIFEST).await.map_err(refused)?;
                    let refs = ManifestRefs::parse(&json)?;
                    if refs.vm_id != vm {
                        return Err(ReplicaError::Refused(format!(
                            "a manifest of VM {} in the set of VM {vm}",
                            refs.vm_id
                        )));
                    }
                    write_file(&staging.manifest(refs.snapshot_id), &[&json]).await?;
                    manifests.push(refs);
                }
                // The layer the guest writes is not replicated: a restart puts a fresh one
                // on the snapshot's layer.
                Header::Top { .. } => {}
                Header::End => break,
            }
        }
        got.snapshots = self.commit(vm, &staging, &manifests).await?;
        Ok(got)
    }

    /// Moves the staged set in: the packs made durable, then layers (the store's own copy
    /// wins over a staged one of the same name), then the manifests whose chain and chunks
    /// are complete.
    async fn commit(
        &self,
        vm: Uuid,
        staging: &Staging,
        manifests: &[ManifestRefs],
    ) -> Result<Vec<Uuid>, ReplicaError> {
        self.chunks.sync().await?;
        let _serial = self.lock.lock().await;
        let layer_meta = |name: &str| -> Option<LayerMeta> {
            self.layer_meta(vm, name).or_else(|| {
                let bytes = std::fs::read(staging.layer_meta(name)).ok()?;
                serde_json::from_slice(&bytes).ok()
            })
        };
        let complete: Vec<&ManifestRefs> = manifests
            .iter()
            .filter(|m| {
                let chunks_ok = m
                    .chunks
                    .iter()
                    .all(|c| self.chunks.has(c));
                let mut seen = BTreeSet::new();
                let mut next = Some(m.layer.clone());
                let mut chain_ok = true;
                while let Some(name) = next.take() {
                    match layer_meta(&name) {
                        Some(meta) if seen.insert(name) => next = meta.backing,
                        _ => chain_ok = false,
                    }
                }
                if !(chunks_ok && chain_ok) {
                    tracing::warn!(snapshot_id = %m.snapshot_id, chunks_ok, chain_ok, "a snapshot of the set is incomplete; not replicated");
                }
                chunks_ok && chain_ok
            })
            .collect();
        self.move_layers(vm, staging).await?;
        for m in &complete {
            let to = self.manifest_path(vm, m.snapshot_id);
            rename_into(&staging.manifest(m.snapshot_id), &to).await?;
        }
        Ok(complete.iter().map(|m| m.snapshot_id).collect())
    }

    async fn move_layers(&self, vm: Uuid, staging: &Staging) -> Result<(), ReplicaError> {
        let dir = staging.dir.join("layers");
        let Ok(mut entries) = tokio::fs::read_dir(&dir).await else {
            return Ok(());
        };
        while let Some(e) = entries.next_entry().await.map_err(io("list", &dir))? {
            let Some(name) = e.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if !is_layer_name(&name) || self.layer_meta(vm, &name).is_some() {
                continue;
            }
            rename_into(&staging.layer(&name), &self.layer_path(vm, &name)).await?;
            // Its description last: a layer without one is not in the store.
            rename_into(&staging.layer_meta(&name), &self.layer_meta_path(vm, &name)).await?;
        }
        Ok(())
    }
}

async fn rename_into(from: &Path, to: &Path) -> Result<(), ReplicaError> {
    if let Some(dir) = to.parent() {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(io("create", dir))?;
    }
    tokio::fs::rename(from, to)
        .await
        .map_err(io("rename", from))
}
