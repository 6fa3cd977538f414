//! Format detection: qcow2 (checked by [`crate::qcow2`]), raw (a disk with a partition table
//! or a bare ext/XFS file system), and every other format refused by name.

use serde::{Deserialize, Serialize};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// How much of a file's start inspection reads: the largest qcow2 cluster (2 MiB), which
/// holds the header and all its extensions.
pub const HEAD_BYTES: usize = 2 << 20;

/// Disk formats nimbus accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    Qcow2,
    Raw,
}

impl DiskFormat {
    /// The name QEMU and qemu-img use (always passed explicitly: never let a tool probe).
    pub fn as_str(&self) -> &'static str {
        match self {
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Raw => "raw",
        }
    }
}

/// What inspection found in an acceptable image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inspection {
    pub format: DiskFormat,
    /// Size of the disk the guest sees, in bytes.
    pub virtual_size: u64,
}

/// Why a file is not accepted as an image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("the file is a {0} image; only qcow2 and raw are accepted (convert it with `qemu-img convert -O qcow2`)")]
    Unsupported(&'static str),
    #[error("the file is not a disk image: not qcow2, and not a raw disk (a multiple of 512 bytes with an MBR/GPT partition table or an ext2/3/4 or XFS file system)")]
    NotAnImage,
    #[error("the qcow2 image is refused: {0}")]
    UnsafeQcow2(String),
    #[error("the qcow2 header is malformed: {0}")]
    MalformedQcow2(String),
    #[error("cannot read the image: {0}")]
    Io(String),
}

/// Signatures of formats that are refused (some of them reference other files).
const REFUSED: &[(usize, &[u8], &str)] = &[
    (0, b"KDMV", "VMDK"),
    (0, b"# Disk DescriptorFile", "VMDK descriptor"),
    (0, b"COWD", "VMDK (ESX sparse)"),
    (0, b"vhdxfile", "VHDX"),
    (0, b"conectix", "VHD"),
    (64, &[0x7f, 0x10, 0xda, 0xbe], "VDI"),
    (0, b"QED\0", "QED"),
    (0, b"LUKS\xba\xbe", "LUKS"),
    (0, b"WithoutFreeSpace", "Parallels"),
    (0, b"WithouFreSpacExt", "Parallels"),
    (0, b"Bochs Virtual HD Image", "Bochs"),
    (0, b"#!/bin/sh\n#V2.0 Format", "cloop"),
    (0, b"QFI\xfb", "qcow2"),
    (0, b"QFI\xfa", "qcow (version 1)"),
];

fn at(head: &[u8], off: usize, sig: &[u8]) -> bool {
    head.get(off..off + sig.len()) == Some(sig)
}

/// Inspects an image from its first bytes (`head`, at least [`HEAD_BYTES`] or the whole
/// file) and its length. Pure: reads nothing else.
pub fn inspect(head: &[u8], len: u64) -> Result<Inspection, FormatError> {
    if at(head, 0, b"QFI\xfb") {
        return crate::qcow2::inspect(head, len);
    }
    if let Some((_, _, name)) = REFUSED.iter().find(|(off, sig, _)| at(head, *off, sig)) {
        return Err(FormatError::Unsupported(name));
    }
    // A VHD has its footer at the end; a fixed one is otherwise raw data. Its footer sits in
    // the last 512 bytes, which `head` covers only for small files: checked by inspect_file.
    let is_raw = len > 0
        && len.is_multiple_of(512)
        && (at(head, 510, &[0x55, 0xaa]) || at(head, 0x438, &[0x53, 0xef]) || at(head, 0, b"XFSB"));
    if is_raw {
        Ok(Inspection {
            format: DiskFormat::Raw,
            virtual_size: len,
        })
    } else {
        Err(FormatError::NotAnImage)
    }
}

/// Inspects the file at `path`: its head, and for raw candidates its last sector (a fixed
/// VHD's footer).
pub fn inspect_file(path: &Path) -> Result<Inspection, FormatError> {
    let io = |e: std::io::Error| FormatError::Io(e.to_string());
    let mut f = std::fs::File::open(path).map_err(io)?;
    let len = f.metadata().map_err(io)?.len();
    let mut head = Vec::with_capacity(HEAD_BYTES.min(len as usize));
    (&mut f)
        .take(HEAD_BYTES as u64)
        .read_to_end(&mut head)
        .map_err(io)?;
    let found = inspect(&head, len)?;
    if found.format == DiskFormat::Raw && len >= 512 {
        let mut tail = [0u8; 512];
        f.seek(SeekFrom::Start(len - 512)).map_err(io)?;
        f.read_exact(&mut tail).map_err(io)?;
        if at(&tail, 0, b"conectix") {
            return Err(FormatError::Unsupported("VHD"));
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(len: usize, patch: &[(usize, &[u8])]) -> Vec<u8> {
        let mut d = vec![0u8; len];
        for (off, bytes) in patch {
            d[*off..*off + bytes.len()].copy_from_slice(bytes);
        }
        d
    }

    #[test]
    fn raw_disks_with_a_partition_table_or_file_system_pass() {
        for patch in [
            (510, &[0x55u8, 0xaa][..]),
            (0x438, &[0x53, 0xef]),
            (0, b"XFSB"),
        ] {
            let d = disk(1 << 20, &[patch]);
            assert_eq!(
                inspect(&d, d.len() as u64),
                Ok(Inspection {
                    format: DiskFormat::Raw,
                    virtual_size: 1 << 20
                })
            );
        }
    }

    #[test]
    fn text_and_odd_sizes_are_not_images() {
        let text = b"#cloud-config\nruncmd: []\n".repeat(100);
        assert_eq!(
            inspect(&text, text.len() as u64),
            Err(FormatError::NotAnImage)
        );
        let odd = disk(1000, &[(510, &[0x55, 0xaa])]);
        assert_eq!(inspect(&odd, 1000), Err(FormatError::NotAnImage));
        assert_eq!(inspect(&[], 0), Err(FormatError::NotAnImage));
    }

    #[test]
    fn other_formats_are_refused_by_name() {
        let vmdk = b"# Disk DescriptorFile\nRW 8 FLAT \"/etc/shadow\" 0\n".to_vec();
        let err = inspect(&vmdk, vmdk.len() as u64).expect_err("vmdk");
        assert_eq!(err, FormatError::Unsupported("VMDK descriptor"));
        assert!(err.to_string().contains("qemu-img convert"));
        let vdi = disk(
            1024,
            &[(0, b"<<< Oracle VM >>>"), (64, &[0x7f, 0x10, 0xda, 0xbe])],
        );
        assert_eq!(inspect(&vdi, 1024), Err(FormatError::Unsupported("VDI")));
    }

    #[test]
    fn a_fixed_vhd_footer_is_found_at_the_end() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("vhd");
        let mut d = disk(1 << 20, &[(510, &[0x55, 0xaa])]);
        d.extend(disk(512, &[(0, b"conectix")]));
        std::fs::write(&p, &d).expect("write");
        assert_eq!(inspect_file(&p), Err(FormatError::Unsupported("VHD")));
    }
}
