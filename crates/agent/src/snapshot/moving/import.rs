//! Target side: receives a snapshot set, checking every frame, into `arriving/<id>/`.

use super::frame::{read_data, read_header, Header, MAX_MANIFEST};
use super::{check_layer_name, Arriving, StagedLayer, StagedSet};
use crate::error::{Error, Result};
use crate::instance::files::VmDir;
use crate::snapshot::chunks::MAX_CHUNK;
use crate::snapshot::manifest::{Manifest, SnapshotFiles};
use crate::snapshot::packs::record;
use crate::snapshot::{failpoint, SnapshotStore};
use nimbus_agent_api::{ImportedSnapshotSet, SnapshotSetPart};
use std::path::{Path, PathBuf};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

/// Largest layer accepted (a bound against a hostile stream: a layer never exceeds the
/// disk's virtual size plus qcow2 metadata).
const MAX_LAYER: u64 = 4 << 40;

/// Receives `part` of the snapshot set of VM `id` from `body` into its staging (the memory
/// part of a live move apart from the disk part: the two may arrive side by side). On any
/// failure nothing is staged (the chunks already stored are collected as garbage).
///
/// A part with chunks holds the store's writer lock throughout: two receives of the same
/// staging (a retried copy) follow each other, and no collection removes a chunk received
/// before its manifest is staged. The disk part stores no chunk and takes no lock.
pub async fn receive<R: AsyncRead + Unpin>(
    store: &SnapshotStore,
    id: Uuid,
    part: SnapshotSetPart,
    body: &mut R,
) -> Result<ImportedSnapshotSet> {
    let arriving = store.arriving_part(id, part);
    let started = std::time::Instant::now();
    let received = {
        let _one = match part {
            SnapshotSetPart::Disk => None,
            _ => Some(store.writer().await),
        };
        let received = match fresh_staging(&arriving) {
            Ok(()) => Receiver::new(store, &arriving, id, part).run(body).await,
            Err(e) => Err(e),
        };
        if received.is_err() {
            let _ = arriving.remove();
        }
        received
    };
    match received {
        Ok((stats, work)) => {
            tracing::info!(instance_id = %id, ?part, ?stats, took = ?started.elapsed(), checking_chunks = ?work.chunks, writing_layers = ?work.layers, finishing = ?work.finish, "snapshot set received");
            Ok(stats)
        }
        Err(e) => {
            if let Err(gc) = store.collect_garbage().await {
                tracing::warn!(error = %gc.chain(), "cannot collect unused memory chunks");
            }
            Err(e)
        }
    }
}

/// Empties `arriving` (a set an earlier attempt left) for a new receive.
fn fresh_staging(arriving: &Arriving) -> Result<()> {
    arriving.remove()?;
    std::fs::create_dir_all(arriving.layers_dir())
        .map_err(Error::io("create", &arriving.layers_dir()))
}

struct Receiver<'a> {
    store: &'a SnapshotStore,
    arriving: &'a Arriving,
    vm: Uuid,
    part: SnapshotSetPart,
    set: StagedSet,
    manifests: Vec<Manifest>,
    stats: ImportedSnapshotSet,
    /// Chunks received, not yet stored: (hash, flags, stored bytes).
    pending: Vec<(String, u8, Vec<u8>)>,
    pending_bytes: usize,
    /// The batch being checked and stored while the next one arrives.
    in_flight: Option<InFlight>,
    work: Work,
}

/// A batch of chunks checked and stored on a blocking thread.
struct InFlight {
    task: tokio::task::JoinHandle<(Result<(u64, u64)>, std::time::Duration)>,
    count: u64,
    wire: u64,
}

/// Where a receiver spent its time besides waiting for the stream (logged per set).
#[derive(Debug, Default)]
struct Work {
    chunks: std::time::Duration,
    layers: std::time::Duration,
    finish: std::time::Duration,
}

/// Chunks are checked and stored by batches of about this many bytes.
const BATCH_BYTES: usize = 4 << 20;

impl<'a> Receiver<'a> {
    fn new(
        store: &'a SnapshotStore,
        arriving: &'a Arriving,
        vm: Uuid,
        part: SnapshotSetPart,
    ) -> Self {
        Self {
            store,
            arriving,
            vm,
            part,
            set: StagedSet::default(),
            manifests: Vec::new(),
            stats: ImportedSnapshotSet::default(),
            pending: Vec::new(),
            pending_bytes: 0,
            in_flight: None,
            work: Work::default(),
        }
    }

    async fn run<R: AsyncRead + Unpin>(
        mut self,
        body: &mut R,
    ) -> Result<(ImportedSnapshotSet, Work)> {
        let received = self.frames(body).await;
        // A batch in flight ends before anything else happens (on failure, before the
        // collection of the chunks it may have stored).
        let stored = self.settle().await;
        received?;
        stored?;
        self.finish()
    }

    /// Reads frames up to the end frame.
    async fn frames<R: AsyncRead + Unpin>(&mut self, body: &mut R) -> Result<()> {
        loop {
            let (header, len) = read_header(body).await?;
            self.check_part(&header)?;
            if !matches!(header, Header::Chunk { .. }) {
                self.store_chunks().await?;
            }
            match header {
                Header::Chunk { hash, zstd } => self.chunk(body, hash, zstd, len).await?,
                Header::Layer {
                    name,
                    backing,
                    digest,
                } => self.layer(body, name, backing, &digest, len).await?,
                Header::Manifest => self.manifest(body, len).await?,
                Header::Top { name, fresh } => {
                    check_layer_name(&name)?;
                    self.set.top = Some((name, fresh));
                }
                Header::End => return Ok(()),
            }
        }
    }

    /// A frame of the part this stream carries: a memory part never touches the disk (it
    /// may go into a VM already running here), a disk part carries no memory.
    fn check_part(&self, header: &Header) -> Result<()> {
        let disk = matches!(header, Header::Layer { .. } | Header::Top { .. });
        let memory = matches!(header, Header::Chunk { .. } | Header::Manifest);
        let refused = match self.part {
            SnapshotSetPart::All => false,
            SnapshotSetPart::Disk => memory,
            SnapshotSetPart::Memory => disk,
        };
        if refused {
            return Err(Error::BadRequest(format!(
                "snapshot stream: a {:?} part carries no {header:?} frame",
                self.part
            )));
        }
        Ok(())
    }

    /// A chunk: kept until a batch is full, then checked and stored.
    async fn chunk<R: AsyncRead + Unpin>(
        &mut self,
        body: &mut R,
        hash: String,
        zstd: bool,
        len: u64,
    ) -> Result<()> {
        let data = read_data(body, len, u64::from(MAX_CHUNK) + 1024).await?;
        self.pending_bytes += data.len();
        let flags = if zstd { record::ZSTD } else { 0 };
        self.pending.push((hash, flags, data));
        if self.pending_bytes >= BATCH_BYTES {
            self.store_chunks().await?;
        }
        Ok(())
    }

    /// Checks and stores the chunks received so far on a blocking thread, while the next
    /// batch arrives (one batch at a time: the one before is waited for first).
    async fn store_chunks(&mut self) -> Result<()> {
        self.settle().await?;
        if self.pending.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        let chunks = self.store.chunks().clone();
        let count = batch.len() as u64;
        let wire: u64 = batch.iter().map(|(_, _, d)| d.len() as u64).sum();
        let task = tokio::task::spawn_blocking(move || {
            let t0 = std::time::Instant::now();
            (chunks.put_received_stored(&batch), t0.elapsed())
        });
        self.in_flight = Some(InFlight { task, count, wire });
        Ok(())
    }

    /// Waits for the batch in flight, if any, and counts it.
    async fn settle(&mut self) -> Result<()> {
        let Some(batch) = self.in_flight.take() else {
            return Ok(());
        };
        let (stored, took) = batch
            .task
            .await
            .map_err(|e| Error::Internal(format!("snapshot file work failed: {e}")))?;
        stored?;
        self.work.chunks += took;
        self.stats.chunks += batch.count;
        self.stats.chunk_bytes += batch.wire;
        failpoint::check_host(self.store.state_dir(), "snapshot_import.receiving")
    }

    async fn layer<R: AsyncRead + Unpin>(
        &mut self,
        body: &mut R,
        name: String,
        backing: Option<String>,
        digest: &str,
        len: u64,
    ) -> Result<()> {
        check_layer_name(&name)?;
        if let Some(b) = &backing {
            check_layer_name(b)?;
        }
        if len > MAX_LAYER || self.set.layers.iter().any(|l| l.name == name) {
            return Err(Error::BadRequest(format!(
                "snapshot stream: layer {name} sent twice or too large ({len} bytes)"
            )));
        }
        let path = self.arriving.layers_dir().join(&name);
        let t0 = std::time::Instant::now();
        let got = write_hashed(body, &path, len).await?;
        self.work.layers += t0.elapsed();
        if !got.eq_ignore_ascii_case(digest) {
            return Err(Error::BadRequest(format!(
                "received disk layer {name} does not match its checksum: damaged in transit"
            )));
        }
        check_qcow2_header(&path, &name)?;
        self.set.layers.push(StagedLayer { name, backing });
        self.stats.layers += 1;
        self.stats.layer_bytes += len;
        Ok(())
    }

    async fn manifest<R: AsyncRead + Unpin>(&mut self, body: &mut R, len: u64) -> Result<()> {
        let data = read_data(body, len, MAX_MANIFEST).await?;
        let m: Manifest = serde_json::from_slice(&data)
            .map_err(|e| Error::BadRequest(format!("snapshot stream: bad manifest: {e}")))?;
        let name = m.disk.path.to_string_lossy().into_owned();
        check_layer_name(&name)?;
        if m.vm_id != self.vm || m.spec.id != self.vm {
            return Err(Error::BadRequest(format!(
                "snapshot stream: snapshot {} belongs to VM {}, not {}",
                m.snapshot_id, m.vm_id, self.vm
            )));
        }
        if m.format_version != crate::snapshot::manifest::FORMAT_VERSION {
            return Err(Error::BadRequest(format!(
                "snapshot {} has manifest format {}; this agent reads {}",
                m.snapshot_id,
                m.format_version,
                crate::snapshot::manifest::FORMAT_VERSION
            )));
        }
        self.manifests.push(m);
        Ok(())
    }

    /// The set is complete: every snapshot's chunks are here and its layer was sent (or
    /// lives on shared storage); the manifests and `set.json` are written last.
    fn finish(mut self) -> Result<(ImportedSnapshotSet, Work)> {
        debug_assert!(self.in_flight.is_none(), "a batch still in flight");
        let t0 = std::time::Instant::now();
        if self.part != SnapshotSetPart::Disk {
            // Durable, and readable: the checks below read the packs' files (a disk part
            // stores no chunk and holds no writer lock).
            self.store.chunks().sync()?;
        }
        let sent_layers = !self.set.layers.is_empty();
        for m in &self.manifests {
            if let Some(image) = &m.memory {
                self.store.check_image(image)?;
            }
            let name = m.disk.path.to_string_lossy();
            if sent_layers && !self.set.layers.iter().any(|l| l.name == name) {
                return Err(Error::BadRequest(format!(
                    "snapshot stream: the layer {name} of snapshot {} was not sent",
                    m.snapshot_id
                )));
            }
        }
        let staged = VmDir::new(self.arriving.dir().to_path_buf());
        for m in &self.manifests {
            SnapshotFiles::new(&staged, m.snapshot_id).write(m)?;
        }
        self.stats.snapshots = self.manifests.len() as u32;
        self.set.layers.sort_by(|a, b| a.name.cmp(&b.name));
        self.arriving.write_set(&self.set)?;
        self.work.finish = t0.elapsed();
        Ok((self.stats, self.work))
    }
}

/// Writes `len` bytes of `body` to `path`; answers their BLAKE3 (hex). Not synced here:
/// every received layer is rebased when it is installed, and `qemu-img` flushes the file
/// to disk when it closes it (a sync per layer here cost ~15 ms each on the target's
/// critical path, before its QEMU can start); a set staged but never installed is
/// received again by a retried move, never used as it is.
async fn write_hashed<R: AsyncRead + Unpin>(body: &mut R, path: &Path, len: u64) -> Result<String> {
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(Error::io("create", path))?;
    let mut hasher = blake3::Hasher::new();
    let mut left = len;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        body.read_exact(&mut buf[..n]).await.map_err(|e| {
            Error::BadRequest(format!("the snapshot stream broke off in a layer: {e}"))
        })?;
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n])
            .await
            .map_err(Error::io("write", path))?;
        left -= n as u64;
    }
    file.flush().await.map_err(Error::io("write", path))?;
    Ok(hasher.finalize().to_hex().to_string())
}

/// A received layer is a qcow2 whose data is in the file itself: an external data file
/// (incompatible feature bit 2 of a version 3 header) would make QEMU, and `qemu-img` run by
/// this agent, open a file the sender names. (Its backing file is set by this host.)
pub(super) fn check_qcow2_header(path: &Path, name: &str) -> Result<()> {
    use std::io::Read;
    let mut head = [0u8; 80];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .map_err(|_| Error::BadRequest(format!("received disk layer {name} is not a qcow2")))?;
    let version = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
    let incompatible = u64::from_be_bytes([
        head[72], head[73], head[74], head[75], head[76], head[77], head[78], head[79],
    ]);
    if &head[..4] != b"QFI\xfb" || !(2..=3).contains(&version) {
        return Err(Error::BadRequest(format!(
            "received disk layer {name} is not a qcow2"
        )));
    }
    if version == 3 && incompatible & (1 << 2) != 0 {
        return Err(Error::BadRequest(format!(
            "received disk layer {name} uses an external data file: refused"
        )));
    }
    Ok(())
}

/// The staged layer file `name` of `arriving`.
pub fn staged_layer(arriving: &Arriving, name: &str) -> PathBuf {
    arriving.layers_dir().join(name)
}
