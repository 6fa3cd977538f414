//! Source side: what a VM's snapshots are made of, and their stream (see [`super::frame`]).

use super::frame::{encode_header, Header};
use super::ROOT_LAYER;
use crate::error::{Error, Result};
use crate::instance::files::VmDir;
use crate::snapshot::manifest::{self, Manifest};
use crate::snapshot::{layers, SnapshotStore};
use axum::body::Bytes;
use futures::channel::mpsc;
use futures::SinkExt;
use nimbus_agent_api::{ExportSnapshotSet, SnapshotSetInventory, SnapshotSetPart};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use tokio::io::AsyncReadExt;

/// Chunks read and sent at once.
const CHUNK_BATCH: usize = 256;

/// What the VM in `dir` holds of snapshots.
pub fn inventory(dir: &VmDir) -> Result<SnapshotSetInventory> {
    let manifests = manifest::all(dir)?;
    Ok(SnapshotSetInventory {
        snapshots: manifests.len() as u32,
        layered: dir.top_link().symlink_metadata().is_ok(),
        chunks: chunks_of(&manifests),
    })
}

/// The memory chunks `manifests` use, once each, sorted.
fn chunks_of(manifests: &[Manifest]) -> Vec<String> {
    let chunks: BTreeSet<&String> = manifests
        .iter()
        .filter_map(|m| m.memory.as_ref())
        .flat_map(|i| i.chunks.iter().map(|c| &c.hash))
        .collect();
    chunks.into_iter().cloned().collect()
}

/// A layer about to be sent.
struct LayerPlan {
    path: PathBuf,
    name: String,
    backing: Option<String>,
}

/// Everything a stream sends, decided before the first byte goes.
struct Plan {
    layers: Vec<LayerPlan>,
    manifests: Vec<Manifest>,
    chunks: Vec<String>,
    top: Option<(String, bool)>,
}

/// The name a layer file travels under.
fn name_of(dir: &VmDir, path: &Path) -> Option<String> {
    if layers::same_file(path, &dir.disk_path()) {
        return Some(ROOT_LAYER.to_string());
    }
    let in_layers = path
        .parent()
        .is_some_and(|p| layers::same_file(p, &dir.layers_dir()));
    let name = path.file_name()?.to_string_lossy().into_owned();
    (in_layers && super::is_layer_name(&name)).then_some(name)
}

async fn plan(dir: &VmDir, req: &ExportSnapshotSet) -> Result<Plan> {
    let (disk, memory) = match req.part {
        SnapshotSetPart::All => (true, true),
        SnapshotSetPart::Disk => (true, false),
        SnapshotSetPart::Memory => (false, true),
    };
    let top = dir.top_disk();
    let top_name = name_of(dir, &top)
        .ok_or_else(|| Error::Internal(format!("the top layer {} is unknown", top.display())))?;
    let mut layers_out = Vec::new();
    let mut top_backing = None;
    // The layers only for a part that carries them (not the memory part, which goes beside
    // the memory transfer, nor with shared storage).
    let layer_files = if disk && req.layers {
        layers::layer_files(dir)
    } else {
        Vec::new()
    };
    for path in layer_files {
        let name = name_of(dir, &path).ok_or_else(|| {
            Error::Internal(format!("layer {} has no transferable name", path.display()))
        })?;
        let backing = match layers::backing_of(&path).await? {
            Some((b, _)) => name_of(dir, &b),
            None => None,
        };
        if name != ROOT_LAYER && backing.is_none() {
            return Err(Error::Internal(format!(
                "layer {} stands on no layer of the VM",
                path.display()
            )));
        }
        if layers::same_file(&path, &top) {
            top_backing = backing.clone();
            if req.live {
                continue;
            }
        }
        layers_out.push(LayerPlan {
            path,
            name,
            backing,
        });
    }
    let mut manifests = if memory {
        manifest::all(dir)?
    } else {
        Vec::new()
    };
    // Only chunks of this VM's snapshots, whatever was asked.
    let own = chunks_of(&manifests);
    let chunks = req
        .chunks
        .iter()
        .filter(|c| own.binary_search(c).is_ok())
        .cloned()
        .collect();
    for m in &mut manifests {
        let name = name_of(dir, &m.disk.path).ok_or_else(|| {
            Error::Internal(format!(
                "the layer {} of snapshot {} is not one of the VM's",
                m.disk.path.display(),
                m.snapshot_id
            ))
        })?;
        m.disk.path = PathBuf::from(name);
    }
    let top = match (req.live && req.layers, top_backing) {
        (true, Some(below)) => Some((below, true)),
        (true, None) => None,
        (false, _) => Some((top_name, false)),
    };
    layers_out.retain(|l| !req.skip_layers.contains(&l.name));
    Ok(Plan {
        layers: layers_out,
        manifests,
        chunks,
        top: top.filter(|_| disk),
    })
}

/// The stream of the snapshot set of the VM in `dir`. Errors found before the first byte
/// are answered; one later breaks the stream (the target refuses an incomplete set).
pub async fn stream(
    dir: &VmDir,
    store: &SnapshotStore,
    req: &ExportSnapshotSet,
) -> Result<mpsc::Receiver<std::io::Result<Bytes>>> {
    let started = std::time::Instant::now();
    let plan = plan(dir, req).await?;
    let planned = started.elapsed();
    let (mut tx, rx) = mpsc::channel(16);
    let store = store.clone();
    let part = req.part;
    tokio::spawn(async move {
        match send(&mut tx, &store, plan).await {
            Ok(read) => {
                tracing::info!(?part, ?planned, reading_chunks = ?read, took = ?started.elapsed(), "snapshot set sent")
            }
            Err(e) => {
                tracing::warn!(error = %e.chain(), "sending the snapshot set failed");
                let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
            }
        }
    });
    Ok(rx)
}

type Tx = mpsc::Sender<std::io::Result<Bytes>>;

async fn put(tx: &mut Tx, bytes: Vec<u8>) -> Result<()> {
    tx.send(Ok(Bytes::from(bytes)))
        .await
        .map_err(|_| Error::Internal("the receiver of the snapshot set went away".into()))
}

/// Sends `plan`; answers the time spent reading chunks.
async fn send(tx: &mut Tx, store: &SnapshotStore, plan: Plan) -> Result<std::time::Duration> {
    let mut reading = std::time::Duration::ZERO;
    for layer in plan.layers {
        send_layer(tx, layer).await?;
    }
    for m in plan.manifests {
        let json = serde_json::to_vec(&m).map_err(|e| Error::Internal(e.to_string()))?;
        put(tx, encode_header(&Header::Manifest, json.len() as u64)).await?;
        put(tx, json).await?;
    }
    // In batches: one pass over the packs and one message per batch, not per chunk.
    for batch in plan.chunks.chunks(CHUNK_BATCH) {
        let chunks = store.chunks().clone();
        let hashes = batch.to_vec();
        let t0 = std::time::Instant::now();
        let stored = crate::snapshot::blocking(move || chunks.read_stored(&hashes)).await?;
        reading += t0.elapsed();
        let mut frames = Vec::new();
        for (hash, (flags, data)) in batch.iter().zip(stored) {
            let header = Header::Chunk {
                hash: hash.clone(),
                zstd: flags & crate::snapshot::packs::record::ZSTD != 0,
            };
            frames.extend_from_slice(&encode_header(&header, data.len() as u64));
            frames.extend_from_slice(&data);
        }
        put(tx, frames).await?;
    }
    if let Some((name, fresh)) = plan.top {
        put(tx, encode_header(&Header::Top { name, fresh }, 0)).await?;
    }
    put(tx, encode_header(&Header::End, 0)).await?;
    Ok(reading)
}

async fn send_layer(tx: &mut Tx, layer: LayerPlan) -> Result<()> {
    let path = layer.path.clone();
    let digest = crate::snapshot::blocking(move || manifest::hash_file(&path)).await?;
    let mut file = tokio::fs::File::open(&layer.path)
        .await
        .map_err(Error::io("open", &layer.path))?;
    let len = file
        .metadata()
        .await
        .map_err(Error::io("stat", &layer.path))?
        .len();
    let header = Header::Layer {
        name: layer.name,
        backing: layer.backing,
        digest,
    };
    put(tx, encode_header(&header, len)).await?;
    let mut left = len;
    while left > 0 {
        let mut buf = vec![0u8; left.min(1 << 20) as usize];
        file.read_exact(&mut buf)
            .await
            .map_err(Error::io("read", &layer.path))?;
        left -= buf.len() as u64;
        put(tx, buf).await?;
    }
    Ok(())
}
