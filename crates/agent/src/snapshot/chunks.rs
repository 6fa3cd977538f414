//! The host's content-addressed chunk store for memory images.
//!
//! A memory image (QEMU's migration stream of a background snapshot) is cut into chunks at
//! content-defined boundaries (FastCDC), so that two images of a guest that changed little
//! share almost all their chunks even where the stream's offsets shift. Each chunk is stored
//! once, named by its BLAKE3 hash, appended to a pack file (compressed where it pays, see
//! [`super::packs`]); an image is the list of its chunks. A chunk whose content does not match
//! its name is refused when an image is assembled.
//!
//! Chunks of the first layout, one file per chunk (`<dir>/<first two hex digits>/<hash>`),
//! are still read (and collected), so snapshots taken before packs keep working; new chunks
//! only go to packs.

use super::packs::{PackReader, PackStore};
use crate::error::{Error, Result};
use cutter::Cutter;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, OnceLock};

/// Chunk sizes: small enough that a page dirtied here and there costs little, large enough
/// that a 1 GiB image is about a hundred thousand files at most. Measured on two images of
/// an idle default guest taken 3 s apart (72 MiB streams): the second adds 11% with 16 KiB
/// chunks, 7% with 8 KiB, 4% with 4 KiB.
const MIN_CHUNK: u32 = 2 << 10;
const AVG_CHUNK: u32 = 8 << 10;
pub const MAX_CHUNK: u32 = 32 << 10;

/// Chunks handed from the cutter to a storer at once: a storer woken per chunk costs a
/// thread switch per 8 KiB (a second snapshot here: 4,400 switches of the cutter, batched
/// 300).
const BATCH: usize = 32;

/// Batches queued between the cutter and the storers (about 2 MiB).
const STORE_QUEUE: usize = 8;

/// The cutter's buffer: each read of the image offers at least half of it, so that reads are
/// large (see `follow::MIN_READ`).
const READ_BUFFER: usize = 4 << 20;

/// Threads that hash and store the chunks the cutter cuts (see [`ChunkStore::put_stream`]).
const STORERS: usize = 2;

/// Chunks cut from an image, in stream order: the first one's number and their contents.
type Cut = (usize, Vec<Vec<u8>>);

/// A chunk hashed (and stored when new): its number in the stream and its name.
type Hashed = (usize, ChunkRef);

/// The chunks of an image in stream order, from what the storers answered for `count`
/// chunks.
fn in_stream_order(results: Receiver<Hashed>, count: usize) -> Result<Vec<ChunkRef>> {
    let mut chunks: Vec<Option<ChunkRef>> = vec![None; count];
    for (seq, chunk) in results {
        if let Some(slot) = chunks.get_mut(seq) {
            *slot = Some(chunk);
        }
    }
    chunks
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| Error::Internal("a chunk of the image was never stored".into()))
}

/// One chunk of an image, in stream order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    /// BLAKE3 of the content, hex.
    pub hash: String,
    pub len: u32,
}

/// A memory image as stored: its chunks and a hash of the whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkedImage {
    /// Length of the whole image, in bytes.
    pub len: u64,
    /// BLAKE3 of the whole image, hex.
    pub hash: String,
    pub chunks: Vec<ChunkRef>,
}

/// What storing an image cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stored {
    /// Bytes of chunks that were not in the store yet.
    pub new_bytes: u64,
    pub new_chunks: u64,
}

impl Stored {
    fn plus(self, other: Stored) -> Stored {
        Stored {
            new_bytes: self.new_bytes + other.new_bytes,
            new_chunks: self.new_chunks + other.new_chunks,
        }
    }
}

/// A directory of chunks. Callers serialise writers and garbage collection (see
/// [`super::SnapshotStore`]).
#[derive(Debug, Clone)]
pub struct ChunkStore {
    dir: PathBuf,
    packs: PackStore,
    /// Whether chunks of the first layout may exist (looked at once: new chunks never go
    /// there, so a store without them saves a `stat` per chunk stored).
    first_layout: Arc<OnceLock<bool>>,
}

/// The directory of the packs, under the chunk directory.
const PACKS: &str = "packs";

impl ChunkStore {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            packs: PackStore::new(dir.join(PACKS)),
            dir,
            first_layout: Arc::default(),
        }
    }

    /// Where the first layout kept chunk `hash` (one file per chunk).
    fn path(&self, hash: &str) -> PathBuf {
        let prefix = hash.get(..2).unwrap_or("xx");
        self.dir.join(prefix).join(hash)
    }

    /// Whether chunk `hash` is a file of the first layout.
    fn in_first_layout(&self, hash: &str) -> bool {
        let any = *self.first_layout.get_or_init(|| {
            std::fs::read_dir(&self.dir)
                .is_ok_and(|entries| entries.flatten().any(|e| e.file_name() != PACKS))
        });
        any && self.path(hash).is_file()
    }

    /// Cuts the file `image` into chunks and stores those not yet stored.
    pub fn put_file(&self, image: &Path) -> Result<(ChunkedImage, Stored)> {
        let file = std::fs::File::open(image).map_err(Error::io("open", image))?;
        self.put_stream(file, image)
    }

    /// Cuts the stream `from` (the memory image `image`) into chunks and stores those not yet
    /// stored; makes them durable once, at the end.
    ///
    /// The image is read while QEMU writes it, so the chunker must keep up with QEMU's
    /// writer: one thread cuts (FastCDC, with a second thread when much is in hand, see
    /// [`cutter`]) and hashes the whole image; [`STORERS`] threads
    /// hash each chunk, look it up and compress and append the new ones (compression is
    /// most of the work of a first snapshot, hashing of a second), so that on a host with
    /// cores to spare a large image is compressed on two. (On the 2-core development
    /// machine, which QEMU's writer half fills, this measured the same as one thread
    /// cutting and hashing and one compressing.)
    pub fn put_stream(
        &self,
        from: impl Read + Send,
        image: &Path,
    ) -> Result<(ChunkedImage, Stored)> {
        let started = std::time::Instant::now();
        let (to_store, queue) = std::sync::mpsc::sync_channel::<Cut>(STORE_QUEUE);
        // Taken away by a storer that fails, so that the cutter's next send fails at once
        // instead of waiting for room in a queue nobody reads.
        let queue = std::sync::Mutex::new(Some(queue));
        let (to_collect, results) = std::sync::mpsc::channel::<Hashed>();
        let (cut, stored, cut_at) = std::thread::scope(|scope| {
            let storers: Vec<_> = (0..STORERS)
                .map(|_| {
                    let (queue, results) = (&queue, to_collect.clone());
                    scope.spawn(move || self.store_cut(queue, results))
                })
                .collect();
            drop(to_collect);
            let cutter = scope.spawn(move || {
                let cut = self.cut(from, image, to_store);
                (cut, started.elapsed())
            });
            let (cut, cut_at) = cutter.join().unwrap_or_else(|_| {
                let failed = Error::Internal("the chunk cutter failed".into());
                (Err(failed), started.elapsed())
            });
            let stored = storers.into_iter().try_fold(Stored::default(), |sum, s| {
                let one = s
                    .join()
                    .unwrap_or_else(|_| Err(Error::Internal("a chunk storer failed".into())))?;
                Ok::<_, Error>(sum.plus(one))
            });
            (cut, stored, cut_at)
        });
        // The storers' error first: when they stop, the cutter only sees a closed queue.
        let stored = stored?;
        let (len, hash, count) = cut?;
        let image = ChunkedImage {
            len,
            hash,
            chunks: in_stream_order(results, count)?,
        };
        let appended = started.elapsed();
        self.packs.sync()?;
        tracing::info!(cut = ?cut_at, ?appended, synced = ?started.elapsed(), "chunking phases");
        Ok((image, stored))
    }

    /// Cuts `from` into chunks, numbered in stream order, for the storers; answers the
    /// image's length, its hash and how many chunks it has.
    fn cut(
        &self,
        from: impl Read,
        image: &Path,
        to_store: SyncSender<Cut>,
    ) -> Result<(u64, String, usize)> {
        let mut whole = blake3::Hasher::new();
        let (mut len, mut count) = (0u64, 0usize);
        let mut batch = Vec::with_capacity(BATCH);
        let mut cutter = Cutter::new(from, READ_BUFFER);
        while let Some(chunk) = cutter.next() {
            let chunk = chunk
                .map_err(|e| Error::Internal(format!("cannot read {}: {e}", image.display())))?;
            whole.update(&chunk);
            len += chunk.len() as u64;
            batch.push(chunk);
            // A batch also goes before the cutter reads (and may wait for QEMU), so that
            // the storers are never behind by more than what is in hand.
            if batch.len() == BATCH || !cutter.in_hand() {
                let first = count;
                count += batch.len();
                let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                if to_store.send((first, full)).is_err() {
                    return Err(Error::Internal("the chunk storers stopped".into()));
                }
            }
        }
        Ok((len, whole.finalize().to_hex().to_string(), count))
    }

    /// Hashes the chunks of `queue` until it closes, and compresses and appends those not
    /// stored yet (a chunk met twice is stored once); each chunk's name goes to `results`.
    fn store_cut(
        &self,
        queue: &std::sync::Mutex<Option<Receiver<Cut>>>,
        results: std::sync::mpsc::Sender<Hashed>,
    ) -> Result<Stored> {
        let stored = self.store_each(queue, results);
        if stored.is_err() {
            // The queue closes: the cutter and the other storer stop too.
            if let Ok(mut q) = queue.lock() {
                q.take();
            }
        }
        stored
    }

    fn store_each(
        &self,
        queue: &std::sync::Mutex<Option<Receiver<Cut>>>,
        results: std::sync::mpsc::Sender<Hashed>,
    ) -> Result<Stored> {
        let mut stored = Stored::default();
        loop {
            let next = match queue.lock() {
                Ok(q) => q.as_ref().map(Receiver::recv),
                Err(_) => return Err(Error::Internal("a chunk storer failed".into())),
            };
            // Closed by the cutter (the image is whole) or by a storer that failed.
            let Some(Ok((first, batch))) = next else {
                return Ok(stored);
            };
            for (seq, data) in (first..).zip(batch) {
                let hash = blake3::hash(&data).to_hex().to_string();
                if let Some(bytes) = self.put_chunk(&hash, &data)? {
                    stored.new_bytes += bytes;
                    stored.new_chunks += 1;
                }
                let chunk = ChunkRef {
                    hash,
                    len: data.len() as u32,
                };
                // The collector reads once every storer has ended; it never goes first.
                let _ = results.send((seq, chunk));
            }
        }
    }

    /// Stores one chunk unless present (in a pack, or in the first layout); answers the
    /// bytes it occupies when it was new.
    fn put_chunk(&self, hash: &str, data: &[u8]) -> Result<Option<u64>> {
        let digest = digest_of(hash)?;
        if self.packs.contains(&digest)? || self.in_first_layout(hash) {
            return Ok(None);
        }
        Ok(self.packs.append(&digest, data)?)
    }

    /// Whether chunk `hash` is stored.
    pub fn has(&self, hash: &str) -> bool {
        let in_pack = digest_of(hash).and_then(|d| Ok(self.packs.contains(&d)?));
        in_pack.unwrap_or(false) || self.in_first_layout(hash)
    }

    /// The pack file holding chunk `hash` and the byte range of its stored data there, for
    /// integrity tooling and tests that damage a chunk on purpose; `None` if no pack has it.
    pub fn stored_span(&self, hash: &str) -> Result<Option<(PathBuf, std::ops::Range<u64>)>> {
        let Some(loc) = self.packs.location(&digest_of(hash)?)? else {
            return Ok(None);
        };
        let start = loc.offset + super::packs::record::RECORD_HEADER;
        let span = start..start + u64::from(loc.stored_len);
        Ok(Some((self.packs.pack_path(loc.pack), span)))
    }

    /// The content of chunk `hash`, verified against its name.
    pub fn read_chunk(&self, hash: &str) -> Result<Vec<u8>> {
        let mut reader = self.packs.reader();
        self.read_with(&mut reader, hash)
    }

    /// Chunk `hash` from its pack or, failing that, its file of the first layout; verified.
    fn read_with(&self, reader: &mut PackReader<'_>, hash: &str) -> Result<Vec<u8>> {
        if let Some(data) = reader.read(&digest_of(hash)?, hash)? {
            return Ok(data);
        }
        let path = self.path(hash);
        let data = std::fs::read(&path)
            .map_err(|_| Error::Conflict(format!("memory chunk {} is missing", path.display())))?;
        if blake3::hash(&data).to_hex().as_str() != hash {
            return Err(Error::Conflict(format!(
                "memory chunk {} is damaged: its content does not match its checksum",
                path.display()
            )));
        }
        Ok(data)
    }

    /// Stores a chunk received from elsewhere after checking it is what its name says;
    /// true when it was new.
    pub fn put_received(&self, hash: &str, data: &[u8]) -> Result<bool> {
        if !is_digest(hash) || data.len() > MAX_CHUNK as usize {
            return Err(Error::BadRequest(format!(
                "a received memory chunk is not a chunk ({} bytes named {hash:?})",
                data.len()
            )));
        }
        if blake3::hash(data).to_hex().as_str() != hash {
            return Err(Error::BadRequest(format!(
                "received memory chunk {hash} does not match its checksum: damaged on its \
                 source host or in transit"
            )));
        }
        Ok(self.put_chunk(hash, data)?.is_some())
    }

    /// Chunks as stored (flags, bytes: zstd-compressed or raw), to copy them to another host
    /// as they are. Their content is not checked here: the receiver checks every chunk
    /// against its name (see [`super::packs::PackReader::read_stored`]).
    pub fn read_stored(&self, hashes: &[String]) -> Result<Vec<(u8, Vec<u8>)>> {
        let mut reader = self.packs.reader();
        let mut out = Vec::with_capacity(hashes.len());
        for hash in hashes {
            match reader.read_stored(&digest_of(hash)?, hash)? {
                Some(stored) => out.push(stored),
                None => out.push((0, self.read_with(&mut reader, hash)?)),
            }
        }
        Ok(out)
    }

    /// Stores chunks received from elsewhere in their stored form, after checking each is
    /// what its name says; answers how many were new and the bytes they occupy.
    pub fn put_received_stored(&self, chunks: &[(String, u8, Vec<u8>)]) -> Result<(u64, u64)> {
        let (mut n, mut bytes) = (0, 0);
        for (hash, flags, stored) in chunks {
            let digest = digest_of(hash)?;
            let raw = match *flags {
                0 => Some(stored.clone()),
                super::packs::record::ZSTD => {
                    zstd::bulk::decompress(stored, MAX_CHUNK as usize).ok()
                }
                _ => None,
            };
            let raw = raw
                .filter(|r| r.len() <= MAX_CHUNK as usize && blake3::hash(r).as_bytes() == &digest);
            let Some(raw) = raw else {
                return Err(Error::BadRequest(format!(
                    "received memory chunk {hash} does not match its checksum: damaged on its \
                     source host or in transit"
                )));
            };
            if self.in_first_layout(hash) {
                continue;
            }
            if let Some(b) = self
                .packs
                .append_stored(&digest, *flags, stored, raw.len() as u32)?
            {
                n += 1;
                bytes += b;
            }
        }
        Ok((n, bytes))
    }

    /// Makes the chunks stored so far durable.
    pub fn sync(&self) -> Result<()> {
        Ok(self.packs.sync()?)
    }

    /// Every chunk of `image` is present with its full length (a cheap check before the
    /// slower [`ChunkStore::assemble`], which verifies the content).
    pub fn check(&self, image: &ChunkedImage) -> Result<()> {
        let mut pack_lens = std::collections::HashMap::new();
        for c in &image.chunks {
            if let Some(loc) = self.packs.location(&digest_of(&c.hash)?)? {
                self.packs.check(&loc, &c.hash, c.len, &mut pack_lens)?;
                continue;
            }
            let path = self.path(&c.hash);
            match std::fs::metadata(&path) {
                Ok(m) if m.len() == u64::from(c.len) => {}
                Ok(m) => {
                    return Err(Error::Conflict(format!(
                        "memory chunk {} is damaged: {} bytes instead of {}",
                        path.display(),
                        m.len(),
                        c.len
                    )))
                }
                Err(_) => {
                    return Err(Error::Conflict(format!(
                        "memory chunk {} is missing",
                        path.display()
                    )))
                }
            }
        }
        Ok(())
    }

    /// Writes `image` to `out`, verifying every chunk and the whole against their hashes.
    pub fn assemble(&self, image: &ChunkedImage, out: &Path) -> Result<()> {
        let mut file = std::io::BufWriter::with_capacity(
            1 << 20,
            std::fs::File::create(out).map_err(Error::io("create", out))?,
        );
        let mut whole = blake3::Hasher::new();
        let mut reader = self.packs.reader();
        for c in &image.chunks {
            let data = self.read_with(&mut reader, &c.hash)?;
            whole.update(&data);
            file.write_all(&data).map_err(Error::io("write", out))?;
        }
        file.flush().map_err(Error::io("write", out))?;
        if whole.finalize().to_hex().as_str() != image.hash {
            return Err(Error::Conflict(
                "the memory image does not match its checksum".into(),
            ));
        }
        Ok(())
    }

    /// Removes every chunk not in `keep`; returns the bytes freed.
    pub fn collect_garbage(&self, keep: &HashSet<String>) -> Result<u64> {
        let mut freed = self.packs.collect_garbage(keep)?;
        let Ok(prefixes) = std::fs::read_dir(&self.dir) else {
            return Ok(freed);
        };
        for prefix in prefixes.flatten() {
            if prefix.file_name() == PACKS {
                continue;
            }
            let Ok(entries) = std::fs::read_dir(prefix.path()) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if keep.contains(&name) {
                    continue;
                }
                let len = entry.metadata().map_or(0, |m| m.len());
                match std::fs::remove_file(entry.path()) {
                    Ok(()) => freed += len,
                    Err(e) => tracing::warn!(chunk = name, error = %e, "cannot remove chunk"),
                }
            }
        }
        Ok(freed)
    }
}

/// The bytes of a chunk name (a digest in hex).
fn digest_of(hash: &str) -> Result<[u8; 32]> {
    super::packs::record::digest_bytes(hash)
        .filter(|_| is_digest(hash))
        .ok_or_else(|| Error::BadRequest(format!("{hash:?} is not a chunk name")))
}

/// A BLAKE3 digest in lowercase hex: the only names a chunk may have.
pub fn is_digest(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

mod cutter;
#[cfg(test)]
mod tests;
