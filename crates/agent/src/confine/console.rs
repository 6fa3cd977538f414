//! The console log a guest writes (`console.log`, written by QEMU) is bounded: once it
//! takes more than [`max_bytes`] of disk, everything but its last half is punched out of the
//! file (`fallocate(PUNCH_HOLE)`). Offsets stay valid (the file keeps its length, the
//! punched part reads as a hole, which readers skip with `SEEK_DATA`), QEMU keeps appending
//! to the same open file, and the disk use stays under the bound plus what a guest writes
//! in one check interval. A guest printing in a loop cannot fill the host's disk.

use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::time::Duration;

/// Default bound of a console log's disk use.
pub const DEFAULT_MAX_BYTES: u64 = 8 << 20;
/// How often the logs are checked.
pub const CHECK_EVERY: Duration = Duration::from_millis(500);
/// Hole punching works in whole blocks.
const BLOCK: u64 = 4096;

/// The bound: [`DEFAULT_MAX_BYTES`], or `NIMBUS_CONSOLE_LOG_MAX_BYTES` (at least 64 KiB).
pub fn max_bytes() -> u64 {
    std::env::var("NIMBUS_CONSOLE_LOG_MAX_BYTES")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(DEFAULT_MAX_BYTES, |v| v.max(64 << 10))
}

/// Bounds `log` to `max` bytes of disk; returns the bytes punched out.
pub fn bound(log: &Path, max: u64) -> std::io::Result<u64> {
    let file = match std::fs::OpenOptions::new().write(true).open(log) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    let used = meta.blocks() * 512;
    if used <= max {
        return Ok(0);
    }
    let keep = max / 2;
    let end = meta.len().saturating_sub(keep) / BLOCK * BLOCK;
    if end == 0 {
        return Ok(0);
    }
    use nix::fcntl::{fallocate, FallocateFlags};
    fallocate(
        file.as_raw_fd(),
        FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
        0,
        end as i64,
    )
    .map_err(std::io::Error::from)?;
    Ok(used.saturating_sub(file.metadata()?.blocks() * 512))
}

/// The first offset at or after `offset` that still holds data (past a punched-out part);
/// `offset` itself when it holds data or nothing can be told.
pub fn first_kept(file: &std::fs::File, offset: u64) -> u64 {
    use nix::unistd::{lseek, Whence};
    match lseek(file.as_raw_fd(), offset as i64, Whence::SeekData) {
        Ok(o) if o >= 0 => (o as u64).max(offset),
        _ => offset,
    }
}

/// Bounds the console log of every VM in `vms_dir`, forever.
pub async fn run(vms_dir: std::path::PathBuf) {
    let max = max_bytes();
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Ok(entries) = std::fs::read_dir(&vms_dir) else {
            continue;
        };
        for vm in entries.flatten() {
            let log = nimbus_qemu::VmPaths::new(vm.path()).console_log();
            match bound(&log, max) {
                Ok(0) => {}
                Ok(n) => tracing::info!(log = %log.display(), punched = n, "console log bounded"),
                Err(e) => {
                    tracing::warn!(log = %log.display(), error = %e, "cannot bound the console log")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, SeekFrom, Write};

    #[test]
    fn a_log_over_the_bound_keeps_its_tail_and_its_offsets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("console.log");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open");
        let line = b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\n";
        for _ in 0..(1 << 20) / line.len() {
            f.write_all(line).expect("write");
        }
        f.sync_all().expect("sync");
        let max = 256 << 10;
        assert!(bound(&log, max).expect("bound") > 0, "punched");
        let meta = std::fs::metadata(&log).expect("stat");
        assert_eq!(meta.len(), 1 << 20, "the length (offsets) stays");
        assert!(
            meta.blocks() * 512 <= max,
            "{} bytes used",
            meta.blocks() * 512
        );
        // Appends go on at the end; a reader from 0 starts at the kept tail.
        f.write_all(b"after\n").expect("write");
        let mut r = std::fs::File::open(&log).expect("open");
        let start = first_kept(&r, 0);
        assert!(start > 0 && start < 1 << 20, "{start}");
        r.seek(SeekFrom::Start(start)).expect("seek");
        let mut tail = String::new();
        r.read_to_string(&mut tail).expect("read");
        assert!(tail.ends_with("after\n") && !tail.starts_with('\0'));
        assert_eq!(bound(&log, max).expect("again"), 0, "under the bound now");
    }
}
