//! Disk images as data: what format a file is, whether it is safe to hand to QEMU, and its
//! content digest.
//!
//! Nothing here runs a tool. An uploaded file is inspected in Rust ([`inspect`]) before
//! `qemu-img` or QEMU ever opens it, because those tools follow references written in the
//! file (a qcow2 backing file or external data file, a VMDK descriptor's extents) and
//! would read host files for a tenant (CVE-2022-47951, CVE-2024-32498). Only qcow2 without
//! such references and raw disks pass; every other format is refused by name.

mod digest;
mod format;
mod qcow2;

pub use digest::{Digest, DigestError, Sha256Writer};
pub use format::{inspect, inspect_file, DiskFormat, FormatError, Inspection, HEAD_BYTES};
