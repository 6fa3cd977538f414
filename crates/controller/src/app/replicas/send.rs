//! Sending a replica to the host an HA restart lands on: the frames an agent's export sends
//! (see `nimbus_agent_api::snapshot_move::frame`), so the target checks and stages them as it
//! does a moving instance's set, and the instance is then defined with it.

use super::{io, LayerMeta, ReplicaChunks, ReplicaError, ReplicaStore};
use bytes::Bytes;
use futures::channel::mpsc;
use futures::SinkExt;
use nimbus_agent_api::snapshot_move::frame::{encode_header, Header};
use std::path::PathBuf;
use tokio::io::AsyncReadExt;
use uuid::Uuid;

/// What a restart from snapshot `snapshot` sends: the snapshot and every other replicated
/// snapshot of the VM (so its tree stays restorable on the new host), their layer chains
/// (first layer first) and the chunks they use.
#[derive(Debug, Clone)]
pub struct RestoreSet {
    pub snapshot: Uuid,
    /// The snapshot's layer: the restarted guest writes into a fresh layer on it.
    pub top: String,
    layers: Vec<(String, LayerMeta, PathBuf)>,
    manifests: Vec<Vec<u8>>,
    /// Every chunk the manifests name, once each.
    pub chunks: Vec<String>,
    /// The other replicated snapshots sent with it.
    pub snapshots: Vec<Uuid>,
}

impl RestoreSet {
    /// The set without the layers named in `held` (a receiver that holds them already:
    /// frozen layers keep their content, as for a replication from a host).
    pub fn without_layers(mut self, held: &[String]) -> Self {
        self.layers.retain(|(name, _, _)| !held.contains(name));
        self
    }

    pub fn layer_bytes(&self) -> u64 {
        self.layers.iter().map(|(_, m, _)| m.bytes).sum()
    }
}

impl ReplicaStore {
    /// The set that restores snapshot `sid` of `vm`, or why the replica cannot.
    pub fn restore_set(&self, vm: Uuid, sid: Uuid) -> Result<RestoreSet, ReplicaError> {
        let incomplete = |why: String| ReplicaError::Incomplete(sid, why);
        let (_, wanted) = self
            .manifest(vm, sid)
            .map_err(|e| incomplete(e.to_string()))?;
        let mut set = RestoreSet {
            snapshot: sid,
            top: wanted.layer.clone(),
            layers: Vec::new(),
            manifests: Vec::new(),
            chunks: Vec::new(),
            snapshots: Vec::new(),
        };
        let mut chunks = std::collections::BTreeSet::new();
        let mut others = self.snapshots_of(vm);
        others.retain(|s| *s != sid);
        others.insert(0, sid);
        for s in others {
            let Ok((json, refs)) = self.manifest(vm, s) else {
                continue;
            };
            let chain = match self.chain(vm, &refs.layer) {
                Ok(c) => c,
                Err(why) if s == sid => return Err(incomplete(why)),
                Err(_) => continue,
            };
            if let Some(c) = refs.chunks.iter().find(|c| !self.chunks.has(c)) {
                if s == sid {
                    return Err(incomplete(format!(
                        "its memory chunk {c} is not in the store"
                    )));
                }
                continue;
            }
            for (name, meta) in chain.into_iter().rev() {
                if !set.layers.iter().any(|(n, _, _)| n == &name) {
                    let path = self.layer_path(vm, &name);
                    set.layers.push((name, meta, path));
                }
            }
            chunks.extend(refs.chunks);
            set.manifests.push(json);
            set.snapshots.push(s);
        }
        set.chunks = chunks.into_iter().collect();
        Ok(set)
    }

    /// The stream of `set`, with the chunks of `send` only (those the target lacks). A
    /// failure while sending breaks the stream: the target refuses an incomplete set.
    pub fn stream(
        &self,
        set: RestoreSet,
        send: Vec<String>,
    ) -> mpsc::Receiver<std::io::Result<Bytes>> {
        let send: Vec<String> = send
            .into_iter()
            .filter(|c| super::is_chunk_name(c))
            .collect();
        let chunks = self.chunks.clone();
        let (mut tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            if let Err(e) = send_set(&mut tx, set, &chunks, send).await {
                tracing::warn!(error = %e, "sending a replica failed");
                let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
            }
        });
        rx
    }
}

type Tx = mpsc::Sender<std::io::Result<Bytes>>;

async fn put(tx: &mut Tx, bytes: Vec<u8>) -> Result<(), ReplicaError> {
    tx.send(Ok(Bytes::from(bytes)))
        .await
        .map_err(|_| ReplicaError::Refused("the receiver of the replica went away".into()))
}

/// Chunks read and sent at once (about 1 MiB: chunks average 8 KiB).
const CHUNK_BATCH: usize = 128;

async fn send_set(
    tx: &mut Tx,
    set: RestoreSet,
    chunks: &ReplicaChunks,
    send: Vec<String>,
) -> Result<(), ReplicaError> {
    for (name, meta, path) in set.layers {
        let header = Header::Layer {
            name,
            backing: meta.backing,
            digest: meta.digest,
        };
        let mut file = tokio::fs::File::open(&path)
            .await
            .map_err(io("open", &path))?;
        let len = file.metadata().await.map_err(io("stat", &path))?.len();
        put(tx, encode_header(&header, len)).await?;
        let mut left = len;
        while left > 0 {
            let mut buf = vec![0u8; left.min(1 << 20) as usize];
            file.read_exact(&mut buf).await.map_err(io("read", &path))?;
            left -= buf.len() as u64;
            put(tx, buf).await?;
        }
    }
    for json in set.manifests {
        put(tx, encode_header(&Header::Manifest, json.len() as u64)).await?;
        put(tx, json).await?;
    }
    // In batches: one pass over the packs and one message per batch, not per chunk.
    for batch in send.chunks(CHUNK_BATCH) {
        put(tx, chunks.frames(batch.to_vec()).await?).await?;
    }
    let top = Header::Top {
        name: set.top,
        fresh: true,
    };
    put(tx, encode_header(&top, 0)).await?;
    put(tx, encode_header(&Header::End, 0)).await
}
