//! Small disks for tests of uploaded images.

use std::path::{Path, PathBuf};

/// Writes `dir/halt.raw`, a 4 MiB raw disk: an MBR boot sector that halts the CPU (SeaBIOS
/// boots it from the virtio disk and QEMU runs, which is all distribution needs), then a
/// recognisable pattern.
pub fn halting_disk(dir: &Path) -> PathBuf {
    let mut d: Vec<u8> = (0..4usize << 20).map(|i| (i % 251) as u8).collect();
    d[..512].fill(0);
    d[..4].copy_from_slice(&[0xfa, 0xf4, 0xeb, 0xfd]); // cli; hlt; jmp back to hlt
    d[510] = 0x55;
    d[511] = 0xaa;
    let p = dir.join("halt.raw");
    std::fs::write(&p, d).expect("write the disk");
    p
}
