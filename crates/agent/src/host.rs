//! What this host offers: CPUs, memory, disk space.

use std::path::Path;

/// Number of CPUs this process may use.
pub fn cpus() -> u32 {
    std::thread::available_parallelism()
        .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
        .unwrap_or_else(|_| {
            std::fs::read_to_string("/proc/cpuinfo")
                .map(|t| count_processors(&t))
                .unwrap_or(1)
        })
}

/// Counts the `processor` entries of `/proc/cpuinfo`.
pub fn count_processors(cpuinfo: &str) -> u32 {
    let n = cpuinfo
        .lines()
        .filter(|l| l.split(':').next().is_some_and(|k| k.trim() == "processor"))
        .count();
    u32::try_from(n.max(1)).unwrap_or(u32::MAX)
}

/// Total memory in MiB (from `/proc/meminfo`), 0 if unknown.
pub fn memory_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| parse_mem_total_kib(&t))
        .map_or(0, |kib| kib / 1024)
}

/// `MemTotal` of `/proc/meminfo`, in KiB.
pub fn parse_mem_total_kib(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Free space (for unprivileged users) of the filesystem holding `dir`, in GiB.
pub fn disk_free_gib(dir: &Path) -> u64 {
    match nix::sys::statvfs::statvfs(dir) {
        Ok(s) => s.blocks_available().saturating_mul(s.fragment_size()) >> 30,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "statvfs failed");
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_meminfo_and_cpuinfo() {
        let meminfo = "MemTotal:       24683520 kB\nMemFree:        24240000 kB\n";
        assert_eq!(parse_mem_total_kib(meminfo), Some(24683520));
        assert_eq!(parse_mem_total_kib("nothing"), None);
        let cpuinfo = "processor\t: 0\nmodel name\t: x\n\nprocessor\t: 1\nmodel name\t: x\n";
        assert_eq!(count_processors(cpuinfo), 2);
    }

    #[test]
    fn reads_this_host() {
        assert!(cpus() >= 1);
        assert!(memory_mib() > 0);
        let _ = disk_free_gib(Path::new("/"));
    }
}
