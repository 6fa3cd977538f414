//! Memory chunks in pack files: appended, indexed, compressed where it pays (zstd).
//!
//! One file per chunk costs a file creation per 8 KiB written and an open per chunk read: for
//! a 512 MiB guest, tens of thousands of each per snapshot and per restore. A pack instead is
//! one append-only file (up to [`PACK_LIMIT`]) of records, each carrying its chunk's hash, with
//! an index file of fixed-size entries beside it (format in [`record`]); the host's index of
//! every chunk is loaded from the index files at first use (rebuilt from its pack when an index
//! does not end where its pack does, behind or ahead of it, e.g. after a crash between the two
//! appends or the two syncs; a record cut short by a crash is cut off). Every read checks the chunk's content against its hash (after decompression), so
//! a damaged pack is refused as a damaged chunk file was. Removing chunks rewrites the packs
//! that hold them with their live records only (garbage collection).
//!
//! Used by the agent (its snapshots' memory) and by the controller (its replicas of them), so
//! both store, check and collect chunks the same way.
//!
//! Concurrency: appends and garbage collection are serialised by the caller (the agent's
//! `SnapshotStore`, the controller's replica store); readers hold [`PackStore::reader`] (a shared lock that a
//! collection waits for) while they read.

pub mod error;
pub mod record;

pub use error::{PackError, Result};

use error::PackError as Error;
use record::Location;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

/// A pack is closed for appends once this large.
pub const PACK_LIMIT: u64 = 64 << 20;

/// The packs of one chunk store.
#[derive(Debug, Clone)]
pub struct PackStore {
    dir: PathBuf,
    state: Arc<Mutex<Option<State>>>,
    gc: Arc<RwLock<()>>,
}

#[derive(Debug, Default)]
struct State {
    index: HashMap<[u8; 32], Location>,
    /// Every pack and its length.
    packs: BTreeMap<u32, u64>,
    writer: Option<Writer>,
}

#[derive(Debug)]
struct Writer {
    pack: u32,
    file: std::io::BufWriter<File>,
    idx: std::io::BufWriter<File>,
    len: u64,
}

impl Writer {
    /// Writes out the buffers and makes them durable.
    fn sync(&mut self, path: &Path) -> Result<()> {
        self.file.flush().map_err(Error::io("sync", path))?;
        self.idx.flush().map_err(Error::io("sync", path))?;
        // Side by side: on a journaling file system (ext4 here) two fsyncs in flight share
        // a commit. A crash may then leave the index ahead of its pack or behind it; loading
        // rebuilds the index from the pack either way (see `load_pack`).
        let (pack, idx) = (self.file.get_ref(), self.idx.get_ref());
        let idx_synced = std::thread::scope(|scope| {
            let idx = scope.spawn(|| idx.sync_data());
            let pack = pack.sync_data();
            idx.join()
                .unwrap_or_else(|_| Err(std::io::Error::other("syncing the index failed")))
                .and(pack)
        });
        idx_synced.map_err(Error::io("sync", path))
    }
}

impl PackStore {
    /// The packs in `dir` (created at the first append); nothing is read until first use.
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            state: Arc::default(),
            gc: Arc::default(),
        }
    }

    /// The file of pack `n`.
    pub fn pack_path(&self, n: u32) -> PathBuf {
        self.dir.join(format!("{n:08}.pack"))
    }

    fn idx_path(&self, n: u32) -> PathBuf {
        self.dir.join(format!("{n:08}.idx"))
    }

    /// Runs `f` on the loaded state.
    fn with<T>(&self, f: impl FnOnce(&mut State) -> Result<T>) -> Result<T> {
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            *guard = Some(self.load()?);
        }
        match guard.as_mut() {
            Some(state) => f(state),
            None => Err(Error::Internal("the pack index did not load".into())),
        }
    }

    fn load(&self) -> Result<State> {
        let mut state = State::default();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Ok(state);
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(n) = name
                .strip_suffix(".pack")
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let len = self.load_pack(n, &mut state.index)?;
            state.packs.insert(n, len);
        }
        tracing::debug!(
            packs = state.packs.len(),
            chunks = state.index.len(),
            "pack index loaded"
        );
        Ok(state)
    }

    /// Reads pack `n`'s index into `index` (rebuilding it from the pack when it does not
    /// cover the whole pack); answers the pack's length.
    fn load_pack(&self, n: u32, index: &mut HashMap<[u8; 32], Location>) -> Result<u64> {
        let pack = self.pack_path(n);
        let len = std::fs::metadata(&pack)
            .map_err(Error::io("stat", &pack))?
            .len();
        let idx = std::fs::read(self.idx_path(n)).unwrap_or_default();
        let ok = record::check_file_header(&idx, record::INDEX_MAGIC, "index").is_ok();
        let entries: Vec<_> = if ok {
            idx[record::FILE_HEADER as usize..]
                .chunks_exact(record::ENTRY)
                .map(|e| record::parse_entry(n, e))
                .collect()
        } else {
            Vec::new()
        };
        let end = entries.iter().map(|(_, l)| l.offset + l.record_len()).max();
        if end == Some(len) || (entries.is_empty() && ok && len == record::FILE_HEADER) {
            index.extend(entries);
            return Ok(len);
        }
        tracing::warn!(pack = %pack.display(), "pack index does not match its pack: rebuilding it");
        self.rebuild(n, index)
    }

    /// Rebuilds pack `n`'s index from its records, cutting off a record cut short.
    fn rebuild(&self, n: u32, index: &mut HashMap<[u8; 32], Location>) -> Result<u64> {
        let pack = self.pack_path(n);
        let mut bytes = Vec::new();
        File::open(&pack)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(Error::io("read", &pack))?;
        record::check_file_header(&bytes, record::PACK_MAGIC, &pack.display().to_string())?;
        let mut idx = record::file_header(record::INDEX_MAGIC).to_vec();
        let mut at = record::FILE_HEADER;
        while at + record::RECORD_HEADER <= bytes.len() as u64 {
            let mut h = [0u8; 41];
            h.copy_from_slice(&bytes[at as usize..(at + record::RECORD_HEADER) as usize]);
            let (hash, flags, raw_len, stored_len) = record::parse_record_header(&h);
            let loc = Location {
                pack: n,
                offset: at,
                flags,
                raw_len,
                stored_len,
            };
            if at + loc.record_len() > bytes.len() as u64 {
                break;
            }
            idx.extend_from_slice(&record::entry(&hash, &loc));
            index.insert(hash, loc);
            at += loc.record_len();
        }
        if at < bytes.len() as u64 {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&pack)
                .map_err(Error::io("open", &pack))?;
            f.set_len(at).map_err(Error::io("truncate", &pack))?;
        }
        let idx_path = self.idx_path(n);
        std::fs::write(&idx_path, idx).map_err(Error::io("write", &idx_path))?;
        Ok(at)
    }

    /// Whether the chunk is stored.
    pub fn contains(&self, hash: &[u8; 32]) -> Result<bool> {
        self.with(|s| Ok(s.index.contains_key(hash)))
    }

    pub fn location(&self, hash: &[u8; 32]) -> Result<Option<Location>> {
        self.with(|s| Ok(s.index.get(hash).copied()))
    }

    /// Appends a chunk unless stored; answers the bytes it occupies when it was new.
    pub fn append(&self, hash: &[u8; 32], data: &[u8]) -> Result<Option<u64>> {
        if self.contains(hash)? {
            return Ok(None);
        }
        let (flags, stored) = record::encode(data);
        self.append_stored(hash, flags, &stored, data.len() as u32)
    }

    /// Appends a chunk in its stored form (the caller checked it) unless stored; answers the
    /// bytes it occupies when it was new. Buffered: readable once [`Self::sync`] ran.
    pub fn append_stored(
        &self,
        hash: &[u8; 32],
        flags: u8,
        stored: &[u8],
        raw_len: u32,
    ) -> Result<Option<u64>> {
        self.with(|s| {
            if s.index.contains_key(hash) {
                return Ok(None);
            }
            let w = self.writer(s)?;
            let loc = Location {
                pack: w.pack,
                offset: w.len,
                flags,
                raw_len,
                stored_len: stored.len() as u32,
            };
            let path = self.pack_path(w.pack);
            w.file
                .write_all(&record::record_header(hash, flags, raw_len, loc.stored_len))
                .and_then(|()| w.file.write_all(stored))
                .map_err(Error::io("write", &path))?;
            w.idx
                .write_all(&record::entry(hash, &loc))
                .map_err(Error::io("write", &self.idx_path(w.pack)))?;
            w.len += loc.record_len();
            let (pack, len) = (w.pack, w.len);
            s.packs.insert(pack, len);
            s.index.insert(*hash, loc);
            Ok(Some(loc.record_len()))
        })
    }

    /// The pack appends go to, opened (or a new one once the last is full).
    fn writer<'a>(&self, s: &'a mut State) -> Result<&'a mut Writer> {
        let full = s.writer.as_ref().is_none_or(|w| w.len >= PACK_LIMIT);
        if full {
            if let Some(mut w) = s.writer.take() {
                w.sync(&self.pack_path(w.pack))?;
                s.writer = Some(w);
            }
            let last = s.packs.iter().next_back().map(|(n, l)| (*n, *l));
            let (n, fresh) = match last {
                Some((n, len)) if len < PACK_LIMIT && s.writer.is_none() => (n, false),
                Some((n, _)) => (n + 1, true),
                None => (1, true),
            };
            std::fs::create_dir_all(&self.dir).map_err(Error::io("create", &self.dir))?;
            let open = |p: &Path| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(Error::io("open", p))
            };
            let (pack, idx) = (self.pack_path(n), self.idx_path(n));
            let mut file = open(&pack)?;
            let mut idx_file = open(&idx)?;
            if fresh {
                file.write_all(&record::file_header(record::PACK_MAGIC))
                    .map_err(Error::io("write", &pack))?;
                idx_file
                    .write_all(&record::file_header(record::INDEX_MAGIC))
                    .map_err(Error::io("write", &idx))?;
            }
            let len = file.metadata().map_err(Error::io("stat", &pack))?.len();
            s.packs.insert(n, len);
            s.writer = Some(Writer {
                pack: n,
                file: std::io::BufWriter::with_capacity(1 << 20, file),
                idx: std::io::BufWriter::new(idx_file),
                len,
            });
        }
        s.writer
            .as_mut()
            .ok_or_else(|| Error::Internal("no pack to append to".into()))
    }

    /// Makes what was appended durable.
    pub fn sync(&self) -> Result<()> {
        self.with(|s| match s.writer.as_mut() {
            Some(w) => {
                let path = self.pack_path(w.pack);
                w.sync(&path)
            }
            None => Ok(()),
        })
    }

    /// The cheap check of a chunk before a restore: its record has the expected length and
    /// lies inside its pack (`lens` caches each pack's length). Its content is checked when
    /// it is read.
    pub fn check(
        &self,
        loc: &Location,
        name: &str,
        len: u32,
        lens: &mut HashMap<u32, u64>,
    ) -> Result<()> {
        let path = self.pack_path(loc.pack);
        let pack_len = match lens.get(&loc.pack) {
            Some(l) => *l,
            None => {
                let l = std::fs::metadata(&path).map_or(0, |m| m.len());
                lens.insert(loc.pack, l);
                l
            }
        };
        if loc.raw_len != len || loc.offset + loc.record_len() > pack_len {
            return Err(Error::Damaged(format!(
                "memory chunk {name} in pack {} is damaged: the pack is shorter than its index \
                 says, or the chunk has another length",
                path.display()
            )));
        }
        Ok(())
    }

    /// A reader; garbage collection waits until it is dropped.
    pub fn reader(&self) -> PackReader<'_> {
        PackReader {
            store: self,
            _gc: self.gc.read().unwrap_or_else(|p| p.into_inner()),
            files: HashMap::new(),
        }
    }

    /// Every stored chunk's hash and the bytes its record occupies.
    fn entries(&self) -> Result<Vec<([u8; 32], Location)>> {
        self.with(|s| Ok(s.index.iter().map(|(h, l)| (*h, *l)).collect()))
    }

    /// Removes every chunk whose hex hash is not in `keep`: packs left without a live record
    /// go, the others are rewritten with their live records. Answers the bytes freed.
    pub fn collect_garbage(&self, keep: &HashSet<String>) -> Result<u64> {
        let _gc = self.gc.write().unwrap_or_else(|p| p.into_inner());
        // Rewrites read the packs' files: nothing may still sit in a buffer.
        self.sync()?;
        let mut by_pack: BTreeMap<u32, PackLiveness> = BTreeMap::new();
        for (hash, loc) in self.entries()? {
            let live = keep.contains(&hex::encode(hash));
            let e = by_pack.entry(loc.pack).or_default();
            if live {
                e.0.push((hash, loc));
            } else {
                e.1 = true;
            }
        }
        let mut freed = 0;
        for (n, (live, has_dead)) in by_pack {
            if has_dead {
                freed += self.rewrite(n, live)?;
            }
        }
        Ok(freed)
    }

    /// Replaces pack `n` by one holding only `live` (none: the pack goes); answers the bytes
    /// freed.
    fn rewrite(&self, n: u32, mut live: Vec<([u8; 32], Location)>) -> Result<u64> {
        let (pack, idx) = (self.pack_path(n), self.idx_path(n));
        let old_len = std::fs::metadata(&pack).map_or(0, |m| m.len());
        live.sort_by_key(|(_, l)| l.offset);
        let tmp = pack.with_extension("pack.tmp");
        let tmp_idx = idx.with_extension("idx.tmp");
        let mut new_len = 0;
        let mut moved = Vec::with_capacity(live.len());
        if !live.is_empty() {
            let src = File::open(&pack).map_err(Error::io("open", &pack))?;
            let mut out =
                std::io::BufWriter::new(File::create(&tmp).map_err(Error::io("create", &tmp))?);
            let mut out_idx = record::file_header(record::INDEX_MAGIC).to_vec();
            out.write_all(&record::file_header(record::PACK_MAGIC))
                .map_err(Error::io("write", &tmp))?;
            let mut at = record::FILE_HEADER;
            for (hash, loc) in live {
                let mut buf = vec![0u8; loc.record_len() as usize];
                src.read_exact_at(&mut buf, loc.offset)
                    .map_err(Error::io("read", &pack))?;
                out.write_all(&buf).map_err(Error::io("write", &tmp))?;
                let new = Location { offset: at, ..loc };
                out_idx.extend_from_slice(&record::entry(&hash, &new));
                moved.push((hash, new));
                at += loc.record_len();
            }
            out.flush().map_err(Error::io("write", &tmp))?;
            out.get_ref().sync_data().map_err(Error::io("sync", &tmp))?;
            std::fs::write(&tmp_idx, out_idx).map_err(Error::io("write", &tmp_idx))?;
            new_len = at;
        }
        self.with(|s| {
            if s.writer.as_ref().is_some_and(|w| w.pack == n) {
                s.writer = None;
            }
            s.index.retain(|_, l| l.pack != n);
            if moved.is_empty() {
                let _ = std::fs::remove_file(&idx);
                std::fs::remove_file(&pack).map_err(Error::io("remove", &pack))?;
                s.packs.remove(&n);
            } else {
                std::fs::rename(&tmp_idx, &idx).map_err(Error::io("rename", &tmp_idx))?;
                std::fs::rename(&tmp, &pack).map_err(Error::io("rename", &tmp))?;
                s.packs.insert(n, new_len);
                s.index.extend(moved.iter().copied());
            }
            Ok(())
        })?;
        Ok(old_len.saturating_sub(new_len))
    }
}

/// The live records of a pack, and whether it holds dead ones.
type PackLiveness = (Vec<([u8; 32], Location)>, bool);

/// Reads chunks from packs, keeping each pack open once.
pub struct PackReader<'a> {
    store: &'a PackStore,
    _gc: RwLockReadGuard<'a, ()>,
    files: HashMap<u32, File>,
}

impl PackReader<'_> {
    /// The content of chunk `hash` (hex `name` for errors), checked against its hash; `None`
    /// when no pack holds it.
    pub fn read(&mut self, hash: &[u8; 32], name: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.read_record(hash, name)?.map(|r| r.raw))
    }

    /// Chunk `hash` as stored and as content, checked against its hash.
    pub fn read_record(&mut self, hash: &[u8; 32], name: &str) -> Result<Option<ReadRecord>> {
        let Some((loc, stored)) = self.record(hash, name)? else {
            return Ok(None);
        };
        let damaged = || damaged(&self.store.pack_path(loc.pack), name);
        let raw = record::decode(loc.flags, &stored, loc.raw_len).ok_or_else(damaged)?;
        if blake3::hash(&raw).as_bytes() != hash {
            return Err(damaged());
        }
        Ok(Some(ReadRecord {
            flags: loc.flags,
            stored,
            raw,
        }))
    }

    /// Chunk `hash` as stored (flags, bytes), its record's header checked against the index
    /// but not its content: for a copy to another host, which checks every chunk's content
    /// against its name itself (it trusts no sender), so checking it here too would only
    /// double the work.
    pub fn read_stored(&mut self, hash: &[u8; 32], name: &str) -> Result<Option<(u8, Vec<u8>)>> {
        Ok(self
            .record(hash, name)?
            .map(|(loc, stored)| (loc.flags, stored)))
    }

    /// The stored bytes of chunk `hash`'s record, whose header matches the index; `None`
    /// when no pack holds it.
    fn record(&mut self, hash: &[u8; 32], name: &str) -> Result<Option<(Location, Vec<u8>)>> {
        let Some(loc) = self.store.location(hash)? else {
            return Ok(None);
        };
        let path = self.store.pack_path(loc.pack);
        if let std::collections::hash_map::Entry::Vacant(e) = self.files.entry(loc.pack) {
            let f = File::open(&path).map_err(|_| {
                Error::Damaged(format!("memory pack {} is missing", path.display()))
            })?;
            e.insert(f);
        }
        let file = self
            .files
            .get(&loc.pack)
            .ok_or_else(|| Error::Internal("pack file not open".into()))?;
        let mut buf = vec![0u8; loc.record_len() as usize];
        file.read_exact_at(&mut buf, loc.offset)
            .map_err(|_| damaged(&path, name))?;
        let mut h = [0u8; 41];
        h.copy_from_slice(&buf[..41]);
        let (got, flags, raw_len, stored_len) = record::parse_record_header(&h);
        if got != *hash || (flags, raw_len, stored_len) != (loc.flags, loc.raw_len, loc.stored_len)
        {
            return Err(damaged(&path, name));
        }
        buf.drain(..41);
        Ok(Some((loc, buf)))
    }
}

/// Chunk `name` in the pack at `path` is damaged.
fn damaged(path: &Path, name: &str) -> Error {
    Error::Damaged(format!(
        "memory chunk {name} in pack {} is damaged: its content does not match its checksum",
        path.display()
    ))
}

/// A chunk read from its pack: as stored (to copy it elsewhere as is) and its content.
pub struct ReadRecord {
    pub flags: u8,
    pub stored: Vec<u8>,
    pub raw: Vec<u8>,
}

#[cfg(test)]
mod tests;
