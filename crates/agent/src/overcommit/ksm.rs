//! Kernel same-page merging (KSM): the kernel's `ksmd` merges identical pages of memory
//! regions marked mergeable, which QEMU does for guest RAM by default (`mem-merge=on`), so
//! guests booted from one image share their identical pages.
//!
//! The agent turns KSM on and sets how hard `ksmd` scans (unless told to leave it alone),
//! and reports its counters with the host's inventory. KSM is machine-wide: hosts that are
//! network namespaces of one kernel (the tests, `nimbus up`) all see the same counters.

use nimbus_agent_api::KsmStats;
use std::path::{Path, PathBuf};

/// Where the kernel exposes KSM.
pub const KSM_DIR: &str = "/sys/kernel/mm/ksm";

/// How the agent sets KSM up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KsmConfig {
    /// Turn KSM on and tune it at start; `false` leaves the kernel's settings alone.
    pub manage: bool,
    /// Pages `ksmd` scans per wake-up (kernel default 100).
    pub pages_to_scan: u32,
    /// Milliseconds `ksmd` sleeps between scans (kernel default 20).
    pub sleep_millisecs: u32,
}

impl Default for KsmConfig {
    /// 1,000 pages every 20 ms: about 200 MB/s of scanning, enough to merge a few small guests
    /// within seconds, at a few percent of one CPU.
    fn default() -> Self {
        Self {
            manage: true,
            pages_to_scan: 1000,
            sleep_millisecs: 20,
        }
    }
}

/// Errors of setting KSM up.
#[derive(Debug, thiserror::Error)]
pub enum KsmError {
    #[error("this kernel has no KSM ({0} is missing); run the agent with --ksm=off")]
    Missing(PathBuf),
    #[error("cannot write {path} (the agent must run as root to manage KSM, or pass --ksm=off)")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The writes that apply `config`: (file, value).
pub fn settings(config: &KsmConfig) -> Vec<(&'static str, String)> {
    vec![
        ("pages_to_scan", config.pages_to_scan.to_string()),
        ("sleep_millisecs", config.sleep_millisecs.to_string()),
        ("run", "1".to_string()),
    ]
}

/// Turns KSM on in `dir` (normally [`KSM_DIR`]) with the configured pace.
pub fn apply(dir: &Path, config: &KsmConfig) -> Result<(), KsmError> {
    if !dir.is_dir() {
        return Err(KsmError::Missing(dir.to_path_buf()));
    }
    for (file, value) in settings(config) {
        let path = dir.join(file);
        std::fs::write(&path, &value).map_err(|source| KsmError::Write { path, source })?;
    }
    Ok(())
}

/// Reads the counters of `dir`; `None` if the kernel has no KSM.
pub fn read(dir: &Path) -> Option<KsmStats> {
    let get = |f: &str| -> Option<u64> {
        std::fs::read_to_string(dir.join(f))
            .ok()
            .and_then(|t| t.trim().parse().ok())
    };
    Some(KsmStats {
        run: u32::try_from(get("run")?).unwrap_or(0),
        pages_shared: get("pages_shared").unwrap_or(0),
        pages_sharing: get("pages_sharing").unwrap_or(0),
        pages_unshared: get("pages_unshared").unwrap_or(0),
        page_size: page_size(),
    })
}

fn page_size() -> u64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE) {
        Ok(Some(n)) if n > 0 => n as u64,
        _ => 4096,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applies_and_reads_in_a_directory() {
        let tmp = tempfile::tempdir().expect("tempdir");
        for (f, v) in [
            ("run", "0"),
            ("pages_shared", "12"),
            ("pages_sharing", "40"),
        ] {
            std::fs::write(tmp.path().join(f), v).expect("write");
        }
        let config = KsmConfig {
            manage: true,
            pages_to_scan: 500,
            sleep_millisecs: 50,
        };
        apply(tmp.path(), &config).expect("apply");
        let read_back = |f: &str| std::fs::read_to_string(tmp.path().join(f)).expect("read");
        assert_eq!(read_back("pages_to_scan"), "500");
        assert_eq!(read_back("sleep_millisecs"), "50");
        let stats = read(tmp.path()).expect("stats");
        assert_eq!(
            (stats.run, stats.pages_shared, stats.pages_sharing),
            (1, 12, 40)
        );
        assert_eq!(stats.saved_bytes(), 40 * stats.page_size);
    }

    #[test]
    fn a_kernel_without_ksm() {
        let missing = Path::new("/nonexistent/ksm");
        assert!(read(missing).is_none());
        let err = apply(missing, &KsmConfig::default()).expect_err("no KSM");
        assert!(err.to_string().contains("--ksm=off"), "{err}");
    }
}
