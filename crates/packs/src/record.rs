//! The bytes of a pack: a file header, then records appended one after another; and of its
//! index, one fixed-size entry per record.
//!
//! ```text
//! <n>.pack   "NIMBUSPK" u32 version | record*
//!   record   hash [32] | flags u8 | raw_len u32 | stored_len u32 | data [stored_len]
//! <n>.idx    "NIMBUSIX" u32 version | entry*
//!   entry    hash [32] | offset u64 | flags u8 | raw_len u32 | stored_len u32
//! ```
//! All integers little-endian. `flags` bit 0: the data is zstd-compressed. A record carries
//! its own hash, so an index can be rebuilt from its pack; the hash is BLAKE3 of the raw
//! content, checked on every read.

use crate::error::{PackError as Error, Result};

pub const PACK_MAGIC: &[u8; 8] = b"NIMBUSPK";
pub const INDEX_MAGIC: &[u8; 8] = b"NIMBUSIX";
pub const VERSION: u32 = 1;
/// File header of both packs and indexes: magic and version.
pub const FILE_HEADER: u64 = 12;
/// A record's header in a pack.
pub const RECORD_HEADER: u64 = 41;
/// An index entry.
pub const ENTRY: usize = 49;
/// Flag: the record's data is zstd-compressed.
pub const ZSTD: u8 = 1;
/// zstd level: the fastest regular level (memory pages compress 2-4x at hundreds of MiB/s).
const LEVEL: i32 = 1;

/// Where a chunk is, and how it is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub pack: u32,
    /// Offset of the record (its header) in the pack.
    pub offset: u64,
    pub flags: u8,
    pub raw_len: u32,
    pub stored_len: u32,
}

impl Location {
    /// Bytes the record occupies in its pack.
    pub fn record_len(&self) -> u64 {
        RECORD_HEADER + u64::from(self.stored_len)
    }
}

/// The file header of a pack or index.
pub fn file_header(magic: &[u8; 8]) -> [u8; 12] {
    let mut h = [0u8; 12];
    h[..8].copy_from_slice(magic);
    h[8..].copy_from_slice(&VERSION.to_le_bytes());
    h
}

/// Checks a file header; `what` names the file for the error.
pub fn check_file_header(bytes: &[u8], magic: &[u8; 8], what: &str) -> Result<()> {
    if bytes.len() < FILE_HEADER as usize || &bytes[..8] != magic {
        return Err(Error::Damaged(format!("{what} is not a nimbus pack file")));
    }
    let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if version != VERSION {
        return Err(Error::Damaged(format!(
            "{what} has pack format {version}; this build reads {VERSION} (upgrade nimbus)"
        )));
    }
    Ok(())
}

thread_local! {
    /// One compression context per thread, reused: creating one per chunk (8 KiB) cost as
    /// much as compressing it.
    static COMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// The stored form of `data`: compressed when that saves at least an eighth.
pub fn encode(data: &[u8]) -> (u8, std::borrow::Cow<'_, [u8]>) {
    let compressed = COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        if c.is_none() {
            *c = zstd::bulk::Compressor::new(LEVEL).ok();
        }
        c.as_mut().and_then(|c| c.compress(data).ok())
    });
    match compressed {
        Some(z) if z.len() < data.len() - data.len() / 8 => (ZSTD, z.into()),
        _ => (0, data.into()),
    }
}

/// The raw content of a stored record.
pub fn decode(flags: u8, stored: &[u8], raw_len: u32) -> Option<Vec<u8>> {
    if flags & ZSTD != 0 {
        zstd::bulk::decompress(stored, raw_len as usize)
            .ok()
            .filter(|d| d.len() == raw_len as usize)
    } else {
        (stored.len() == raw_len as usize).then(|| stored.to_vec())
    }
}

pub fn record_header(hash: &[u8; 32], flags: u8, raw_len: u32, stored_len: u32) -> [u8; 41] {
    let mut h = [0u8; 41];
    h[..32].copy_from_slice(hash);
    h[32] = flags;
    h[33..37].copy_from_slice(&raw_len.to_le_bytes());
    h[37..41].copy_from_slice(&stored_len.to_le_bytes());
    h
}

/// Parses a record header: hash, flags, raw and stored lengths.
pub fn parse_record_header(h: &[u8; 41]) -> ([u8; 32], u8, u32, u32) {
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&h[..32]);
    let raw = u32::from_le_bytes([h[33], h[34], h[35], h[36]]);
    let stored = u32::from_le_bytes([h[37], h[38], h[39], h[40]]);
    (hash, h[32], raw, stored)
}

pub fn entry(hash: &[u8; 32], loc: &Location) -> [u8; ENTRY] {
    let mut e = [0u8; ENTRY];
    e[..32].copy_from_slice(hash);
    e[32..40].copy_from_slice(&loc.offset.to_le_bytes());
    e[40] = loc.flags;
    e[41..45].copy_from_slice(&loc.raw_len.to_le_bytes());
    e[45..49].copy_from_slice(&loc.stored_len.to_le_bytes());
    e
}

pub fn parse_entry(pack: u32, e: &[u8]) -> ([u8; 32], Location) {
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&e[..32]);
    let mut off = [0u8; 8];
    off.copy_from_slice(&e[32..40]);
    let loc = Location {
        pack,
        offset: u64::from_le_bytes(off),
        flags: e[40],
        raw_len: u32::from_le_bytes([e[41], e[42], e[43], e[44]]),
        stored_len: u32::from_le_bytes([e[45], e[46], e[47], e[48]]),
    };
    (hash, loc)
}

/// A hex digest as bytes (`None` when it is not one).
pub fn digest_bytes(hex_digest: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_digest, &mut out).ok()?;
    Some(out)
}
