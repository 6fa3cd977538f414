//! The qcow2 header, checked field by field (QEMU's docs/interop/qcow2.txt) the way
//! OpenStack's format_inspector does: an image may not name a backing file, an external
//! data file or encryption, nor set feature bits this code does not know.

use crate::format::{DiskFormat, FormatError, Inspection};

const EXT_END: u32 = 0x0000_0000;
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
const EXT_FULL_DISK_ENCRYPTION: u32 = 0x0537_be77;
const EXT_DATA_FILE: u32 = 0x4441_5441;

/// Incompatible feature bits: dirty (0), corrupt (1), external data file (2), compression
/// type (3), extended L2 entries (4).
const INCOMPAT_DIRTY: u64 = 1 << 0;
const INCOMPAT_CORRUPT: u64 = 1 << 1;
const INCOMPAT_DATA_FILE: u64 = 1 << 2;
const INCOMPAT_KNOWN_SAFE: u64 = INCOMPAT_DIRTY | (1 << 3) | (1 << 4);
/// Autoclear bit 1: "raw external data" (only meaningful with a data file).
const AUTOCLEAR_RAW_DATA: u64 = 1 << 1;

/// Largest virtual disk accepted (64 TiB): beyond it a header is hostile or a mistake.
const MAX_VIRTUAL_SIZE: u64 = 64 << 40;

fn be32(h: &[u8], off: usize) -> Result<u32, FormatError> {
    h.get(off..off + 4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_be_bytes)
        .ok_or_else(|| malformed(format!("header truncated at byte {off}")))
}

fn be64(h: &[u8], off: usize) -> Result<u64, FormatError> {
    h.get(off..off + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| malformed(format!("header truncated at byte {off}")))
}

fn malformed(why: String) -> FormatError {
    FormatError::MalformedQcow2(why)
}

fn unsafe_(why: &str) -> FormatError {
    FormatError::UnsafeQcow2(why.to_string())
}

/// Checks a qcow2 header (`head` starts with its magic) and returns its virtual size.
pub fn inspect(head: &[u8], len: u64) -> Result<Inspection, FormatError> {
    let version = be32(head, 4)?;
    if version != 2 && version != 3 {
        return Err(malformed(format!("unknown version {version}")));
    }
    if be64(head, 8)? != 0 || be32(head, 16)? != 0 {
        return Err(unsafe_(
            "it names a backing file (images must be self-contained: `qemu-img convert -O qcow2` flattens it)",
        ));
    }
    let cluster_bits = be32(head, 20)?;
    if !(9..=21).contains(&cluster_bits) {
        return Err(malformed(format!(
            "cluster_bits {cluster_bits} out of 9..=21"
        )));
    }
    let virtual_size = be64(head, 24)?;
    if virtual_size == 0 || virtual_size > MAX_VIRTUAL_SIZE {
        return Err(malformed(format!(
            "virtual size {virtual_size} out of range"
        )));
    }
    if be32(head, 32)? != 0 {
        return Err(unsafe_("it is encrypted"));
    }
    let header_len = if version == 3 {
        check_v3_features(head)?
    } else {
        72
    };
    let cluster = 1usize << cluster_bits;
    if (header_len as u64) > len || header_len > cluster {
        return Err(malformed(format!(
            "header length {header_len} beyond the file or its first cluster"
        )));
    }
    check_extensions(head, header_len, cluster)?;
    Ok(Inspection {
        format: DiskFormat::Qcow2,
        virtual_size,
    })
}

/// Checks the version 3 feature bits; returns the header length.
fn check_v3_features(head: &[u8]) -> Result<usize, FormatError> {
    let incompatible = be64(head, 72)?;
    if incompatible & INCOMPAT_DATA_FILE != 0 {
        return Err(unsafe_("it uses an external data file"));
    }
    if incompatible & INCOMPAT_CORRUPT != 0 {
        return Err(unsafe_(
            "it is marked corrupt (`qemu-img check -r all` repairs it)",
        ));
    }
    let unknown = incompatible & !INCOMPAT_KNOWN_SAFE & !INCOMPAT_CORRUPT & !INCOMPAT_DATA_FILE;
    if unknown != 0 {
        return Err(unsafe_(&format!(
            "it sets unknown incompatible features {unknown:#x}"
        )));
    }
    if be64(head, 88)? & AUTOCLEAR_RAW_DATA != 0 {
        return Err(unsafe_("it declares raw external data"));
    }
    let header_len = be32(head, 100)? as usize;
    if header_len < 104 || !header_len.is_multiple_of(8) {
        return Err(malformed(format!("header length {header_len}")));
    }
    Ok(header_len)
}

/// Walks the header extensions (they all lie in the first cluster).
fn check_extensions(head: &[u8], start: usize, cluster: usize) -> Result<(), FormatError> {
    let end = cluster.min(head.len());
    let mut off = start;
    while off + 8 <= end {
        let kind = be32(head, off)?;
        let size = be32(head, off + 4)? as usize;
        match kind {
            EXT_END => return Ok(()),
            EXT_BACKING_FORMAT => return Err(unsafe_("it names a backing file format")),
            EXT_DATA_FILE => return Err(unsafe_("it names an external data file")),
            EXT_FULL_DISK_ENCRYPTION => return Err(unsafe_("it is encrypted")),
            _ => {}
        }
        let padded = size.div_ceil(8) * 8;
        off = off
            .checked_add(8 + padded)
            .ok_or_else(|| malformed("extension length overflows".into()))?;
    }
    Err(malformed(
        "header extensions run past the first cluster".into(),
    ))
}

#[cfg(test)]
mod tests;
