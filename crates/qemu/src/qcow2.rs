//! The qcow2 header, read and written directly for the few things nimbus needs on a hot
//! path: a snapshot creates an empty overlay just before the VM's pause, and moving a VM's
//! snapshots asks every layer for its backing file. `qemu-img` costs a process (6-12 ms
//! from the agent) and opens the whole backing chain; these read or write one cluster.
//! Everything else about qcow2 is left to `qemu-img` and QEMU ([`crate::img`]).
//!
//! The layout is QEMU's `docs/interop/qcow2.txt` (all integers big-endian). An empty
//! version 3 overlay, as `qemu-img create -f qcow2 -u -b B -F F` makes it with 64 KiB
//! clusters, is four clusters:
//!
//! ```text
//! cluster 0   header | backing-format extension | end of extensions | backing file name
//! cluster 1   refcount table: one entry, the refcount block in cluster 2
//! cluster 2   refcount block: 16-bit refcounts, 1 for each cluster 0 .. 3 + L1 clusters
//! cluster 3+  L1 table, all zero (nothing allocated: every read goes to the backing file)
//! ```

use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 4] = b"QFI\xfb";
/// Clusters of 64 KiB, QEMU's default.
const CLUSTER_BITS: u32 = 16;
const CLUSTER: u64 = 1 << CLUSTER_BITS;
/// Length of a version 3 header with the compression type field, padded to 8.
const HEADER_LEN: u32 = 112;
/// Refcounts of 16 bits (order 4), QEMU's default.
const REFCOUNT_ORDER: u32 = 4;
/// Backing format header extension.
const BACKING_FORMAT_EXTENSION: u32 = 0xe279_2aca;
/// How much of a file's start is read for its header, extensions and backing file name:
/// they lie in the first cluster.
const HEADER_READ: u64 = CLUSTER;
/// The longest backing file name QEMU opens (its `PATH_MAX`-bound buffer, 1024 with the NUL).
const MAX_BACKING_NAME: usize = 1023;
/// The largest L1 table QEMU opens (`QCOW_MAX_L1_SIZE`, 32 MiB): 4 Mi entries, disks of up
/// to 2 PiB with 64 KiB clusters.
const MAX_L1_ENTRIES: u64 = (32 << 20) / 8;

/// Writes an empty qcow2 (version 3) overlay of `virtual_size` bytes (rounded up to 512, as
/// `qemu-img` does) on `backing` (of format `backing_format`) to the new file `path`; an
/// existing file there is an error (never one a QEMU may hold open). The backing file is
/// not opened, as with `qemu-img create -u`. Not synced, as with `qemu-img create`.
pub fn write_empty_overlay(
    path: &Path,
    backing: &Path,
    backing_format: &str,
    virtual_size: u64,
) -> io::Result<()> {
    let image = empty_overlay(backing.as_os_str().as_bytes(), backing_format, virtual_size)?;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?
        .write_all(&image)
}

/// The bytes of an empty overlay (see the module's layout).
fn empty_overlay(backing: &[u8], backing_format: &str, virtual_size: u64) -> io::Result<Vec<u8>> {
    let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidInput, what);
    let virtual_size = virtual_size
        .checked_next_multiple_of(512)
        .filter(|s| *s > 0)
        .ok_or_else(|| invalid(format!("{virtual_size} bytes is no disk size")))?;
    // Each L2 table maps a cluster's worth of 8-byte entries, each one cluster.
    let per_l2 = CLUSTER * (CLUSTER / 8);
    let l1_entries = virtual_size.div_ceil(per_l2);
    if l1_entries > MAX_L1_ENTRIES {
        return Err(invalid(format!(
            "a disk of {virtual_size} bytes is larger than QEMU opens (2 PiB)"
        )));
    }
    let l1_clusters = (l1_entries * 8).div_ceil(CLUSTER);
    // Header, refcount table, refcount block, L1 table: all must be counted by the one
    // refcount block, which holds CLUSTER / 2 refcounts of 16 bits (true up to 2 PiB).
    let clusters = 3 + l1_clusters;
    debug_assert!(clusters <= CLUSTER / 2);
    let format = backing_format.as_bytes();
    // Header, the backing format extension (data padded to 8), the end extension, the name.
    let name_at = u64::from(HEADER_LEN) + 8 + (format.len() as u64).div_ceil(8) * 8 + 8;
    if backing.is_empty() || backing.len() > MAX_BACKING_NAME || format.is_empty() {
        return Err(invalid(format!(
            "a backing file name of {} bytes (format {backing_format:?}): QEMU opens names \
             of 1 to {MAX_BACKING_NAME} bytes",
            backing.len()
        )));
    }
    debug_assert!(name_at + backing.len() as u64 <= CLUSTER);
    let l1_at = 3 * CLUSTER;
    let mut image = vec![0u8; (l1_at + l1_entries * 8) as usize];
    let mut header = Vec::with_capacity(CLUSTER as usize);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&3u32.to_be_bytes()); // version
    header.extend_from_slice(&name_at.to_be_bytes()); // backing_file_offset
    header.extend_from_slice(&(backing.len() as u32).to_be_bytes()); // backing_file_size
    header.extend_from_slice(&CLUSTER_BITS.to_be_bytes());
    header.extend_from_slice(&virtual_size.to_be_bytes());
    header.extend_from_slice(&0u32.to_be_bytes()); // crypt_method
    header.extend_from_slice(&(l1_entries as u32).to_be_bytes()); // l1_size
    header.extend_from_slice(&l1_at.to_be_bytes()); // l1_table_offset
    header.extend_from_slice(&CLUSTER.to_be_bytes()); // refcount_table_offset
    header.extend_from_slice(&1u32.to_be_bytes()); // refcount_table_clusters
    header.extend_from_slice(&0u32.to_be_bytes()); // nb_snapshots
    header.extend_from_slice(&0u64.to_be_bytes()); // snapshots_offset
    header.extend_from_slice(&[0u8; 24]); // incompatible, compatible, autoclear features
    header.extend_from_slice(&REFCOUNT_ORDER.to_be_bytes());
    header.extend_from_slice(&HEADER_LEN.to_be_bytes());
    header.resize(HEADER_LEN as usize, 0); // compression type zlib, padding
    header.extend_from_slice(&BACKING_FORMAT_EXTENSION.to_be_bytes());
    header.extend_from_slice(&(format.len() as u32).to_be_bytes());
    header.extend_from_slice(format);
    header.resize(header.len().div_ceil(8) * 8, 0);
    header.extend_from_slice(&[0u8; 8]); // end of extensions
    debug_assert_eq!(header.len() as u64, name_at);
    header.extend_from_slice(backing);
    image[..header.len()].copy_from_slice(&header);
    // The refcount table's one entry: the block in cluster 2.
    let table = CLUSTER as usize;
    image[table..table + 8].copy_from_slice(&(2 * CLUSTER).to_be_bytes());
    let block = 2 * CLUSTER as usize;
    for cluster in 0..clusters as usize {
        image[block + 2 * cluster..block + 2 * cluster + 2].copy_from_slice(&1u16.to_be_bytes());
    }
    Ok(image)
}

/// The start of a qcow2 file (version 2 or 3), or `None` when it is not one.
fn read_head(path: &Path) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .take(HEADER_READ)
        .read_to_end(&mut head)
        .ok()?;
    let version = u32_at(&head, 4)?;
    (head.get(..4)? == MAGIC && (2..=3).contains(&version)).then_some(head)
}

fn u32_at(head: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(
        head.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn u64_at(head: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(
        head.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// The virtual size (the disk the guest sees) a qcow2 header records; `None` when the file
/// is not a qcow2 we can read.
pub fn virtual_size(path: &Path) -> Option<u64> {
    u64_at(&read_head(path)?, 24)
}

/// The backing file name and format a qcow2 header records (the same strings `qemu-img
/// info` reports: the name as written, the format `qcow2` when none is recorded).
/// `Some(None)` for an image without backing; `None` when the file is not a qcow2 (version
/// 2 or 3) whose header, extensions and name lie in its first cluster.
pub fn backing(path: &Path) -> Option<Option<(PathBuf, String)>> {
    let head = read_head(path)?;
    let version = u32_at(&head, 4)?;
    let (offset, len) = (
        usize::try_from(u64_at(&head, 8)?).ok()?,
        u32_at(&head, 16)? as usize,
    );
    if offset == 0 {
        return Some(None);
    }
    let name = head.get(offset..offset.checked_add(len)?)?;
    let name = PathBuf::from(std::ffi::OsStr::from_bytes(name));
    // Header extensions (version 3: after the header's own length; 2: after 72 bytes), each
    // `u32 type | u32 length | data padded to 8`, ending with type 0.
    let mut at = if version == 3 {
        u32_at(&head, 100)? as usize
    } else {
        72
    };
    let mut format = None;
    loop {
        let (kind, ext_len) = (
            u32_at(&head, at)?,
            u32_at(&head, at.checked_add(4)?)? as usize,
        );
        if kind == 0 {
            break;
        }
        let data = at.checked_add(8)?;
        if kind == BACKING_FORMAT_EXTENSION {
            let bytes = head.get(data..data.checked_add(ext_len)?)?;
            format = Some(String::from_utf8(bytes.to_vec()).ok()?);
        }
        at = data.checked_add(ext_len.div_ceil(8) * 8)?;
    }
    Some(Some((name, format.unwrap_or_else(|| "qcow2".into()))))
}

#[cfg(test)]
mod tests;
