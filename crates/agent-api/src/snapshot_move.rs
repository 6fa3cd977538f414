//! Moving a VM's snapshots with it (live or cold migration, drain).
//!
//! ```text
//!  controller                    source agent                   target agent
//!  GET  /vms/{id}/snapshot-set ─▶ SnapshotSetInventory
//!        (chunk digests, whether the disk is a chain of layers)
//!  POST /chunks/missing ─────────────────────────────────────────▶ MissingChunks
//!  POST /vms/{id}/snapshot-set/export ─▶ framed stream: frozen disk
//!        ExportSnapshotSet               layers, manifests, only the
//!                                        missing chunks, the top
//!  PUT  /vms/{id}/snapshot-set ──────── the same bytes, relayed ──▶ checks every digest,
//!                                                                 stages it in arriving/<id>
//!  then the usual incoming (live) or cold define: the VM arriving takes the staged set
//!  (layers rebased onto this host's paths, a fresh top on them for a live move).
//! ```
//! A live migration sends the set in two parts ([`SnapshotSetPart`]): the disk layers before
//! the target QEMU starts (it opens its disk on them), then the manifests and memory chunks
//! in parallel with the memory transfer; the target installs that second part into the VM
//! already defined there. A cold migration sends everything at once.
//! The controller relays the bytes, as it relays a cold migration's disk: both agents
//! already trust it, they need no trust in each other. Nothing leaves the source before the
//! migration's commit: the source's copy goes with the VM when the controller deletes it.

use serde::{Deserialize, Serialize};

/// What the source holds of a VM's snapshots.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SnapshotSetInventory {
    /// Complete snapshots of the VM on this host.
    pub snapshots: u32,
    /// The VM's disk is a chain of layers (it has, or had, snapshots): the chain must move.
    pub layered: bool,
    /// BLAKE3 digests (hex) of every memory chunk its snapshots use, once each.
    pub chunks: Vec<String>,
}

impl SnapshotSetInventory {
    /// Whether anything of snapshots has to move with the VM.
    pub fn is_empty(&self) -> bool {
        self.snapshots == 0 && !self.layered
    }
}

/// Which chunks a host lacks (asked with digests, answered with the absent ones).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct MissingChunks {
    pub chunks: Vec<String>,
}

/// Which part of a snapshot set one stream carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotSetPart {
    /// Everything: layers, manifests, chunks, top (a cold move).
    #[default]
    All,
    /// The disk layers and the top only: what the target QEMU needs to open its disk.
    Disk,
    /// The manifests and the chunks only: sent while the memory moves, installed into the
    /// VM already defined on the target (or staged for it when it is not yet).
    Memory,
}

/// The query of `PUT /vms/{id}/snapshot-set`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ImportSnapshotSet {
    #[serde(default)]
    pub part: SnapshotSetPart,
}

/// What the source sends of a VM's snapshots.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ExportSnapshotSet {
    /// The part of the set this stream carries.
    #[serde(default)]
    pub part: SnapshotSetPart,
    /// Chunks the target lacks (others are not sent).
    pub chunks: Vec<String>,
    /// Send the disk layers (false with shared storage: both hosts see the same files).
    pub layers: bool,
    /// Live migration: the top layer (which the guest writes) is not sent; the target makes
    /// a fresh top on the same backing, filled by the disk mirror. Cold: the top is sent.
    pub live: bool,
    /// Layers (by name) the receiver holds already and that are not sent: a replica in the
    /// controller's store asks only for the layers of snapshots taken since the last one
    /// (frozen layers keep their guest-visible content).
    #[serde(default)]
    pub skip_layers: Vec<String>,
}

/// What the target received and checked.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ImportedSnapshotSet {
    pub snapshots: u32,
    pub layers: u32,
    pub layer_bytes: u64,
    pub chunks: u64,
    pub chunk_bytes: u64,
}

/// The byte stream of a snapshot set: a sequence of frames, each
/// `u32 BE header length | header JSON | u64 BE data length | data`, ending with `End`.
/// Agents send and receive it (moves), and so does the controller (the replicas it keeps for
/// HA restarts: it receives a set from the instance's host and sends one to a restart target).
/// Every receiver checks each frame's data: a chunk against its name, a layer against the
/// digest in its header, a manifest by parsing.
pub mod frame {
    use serde::{Deserialize, Serialize};
    use tokio::io::{AsyncRead, AsyncReadExt};

    /// Longest header accepted.
    pub const MAX_HEADER: u32 = 64 << 10;

    /// The name the first layer travels under (the VM's own `disk.qcow2`).
    pub const ROOT_LAYER: &str = "disk.qcow2";

    /// A layer name that cannot point anywhere else: `disk.qcow2` or `<32 hex>.qcow2`.
    pub fn is_layer_name(name: &str) -> bool {
        name == ROOT_LAYER
            || name.strip_suffix(".qcow2").is_some_and(|stem| {
                stem.len() == 32 && stem.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            })
    }

    /// What a frame carries.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(tag = "kind", rename_all = "snake_case")]
    pub enum Header {
        /// A memory chunk named by its BLAKE3 digest, as its pack stores it (zstd-compressed
        /// or raw): copied as is, checked on arrival after decompression.
        Chunk {
            hash: String,
            #[serde(default)]
            zstd: bool,
        },
        /// A frozen disk layer: `disk.qcow2` (the first) or `<uuid>.qcow2`; `backing` names
        /// the layer under it, `None` for the first (on the image's base, or on nothing).
        Layer {
            name: String,
            backing: Option<String>,
            digest: String,
        },
        /// A snapshot manifest (JSON) whose disk path is its layer's name.
        Manifest,
        /// The layer the guest writes: `name` itself (cold, or shared storage), or a fresh
        /// one on `name` (live with local disks, or a restart from a replica).
        Top { name: String, fresh: bool },
        /// The stream is complete.
        End,
    }

    /// Encodes one frame header and the length of the data that follows it.
    pub fn encode_header(header: &Header, data_len: u64) -> Vec<u8> {
        let json = serde_json::to_vec(header).unwrap_or_default();
        let mut out = Vec::with_capacity(json.len() + 12);
        out.extend_from_slice(&(json.len() as u32).to_be_bytes());
        out.extend_from_slice(&json);
        out.extend_from_slice(&data_len.to_be_bytes());
        out
    }

    /// Why a stream could not be read: cut short, or not a snapshot stream.
    #[derive(Debug, thiserror::Error)]
    pub enum FrameError {
        #[error("the snapshot stream broke off: {0}")]
        Broken(#[from] std::io::Error),
        #[error("snapshot stream: {0}")]
        Bad(String),
    }

    /// Reads the next frame header and the length of its data (the caller reads the data).
    pub async fn read_header<R: AsyncRead + Unpin>(r: &mut R) -> Result<(Header, u64), FrameError> {
        let len = r.read_u32().await?;
        if len > MAX_HEADER {
            return Err(FrameError::Bad(format!(
                "a frame header of {len} bytes (at most {MAX_HEADER})"
            )));
        }
        let mut json = vec![0u8; len as usize];
        r.read_exact(&mut json).await?;
        let header = serde_json::from_slice(&json)
            .map_err(|e| FrameError::Bad(format!("bad frame header: {e}")))?;
        let data_len = r.read_u64().await?;
        Ok((header, data_len))
    }

    /// Reads `len` bytes of data bounded by `max`.
    pub async fn read_data<R: AsyncRead + Unpin>(
        r: &mut R,
        len: u64,
        max: u64,
    ) -> Result<Vec<u8>, FrameError> {
        if len > max {
            return Err(FrameError::Bad(format!(
                "a frame of {len} bytes (at most {max})"
            )));
        }
        let mut data = vec![0u8; len as usize];
        r.read_exact(&mut data).await?;
        Ok(data)
    }
}
