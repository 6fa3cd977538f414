//! The logs of a failed test's cloud, kept after its temporary directory is removed.
//!
//! A failing end-to-end test is only understood from its cloud's logs (`nimbus up`'s, each
//! agent's, each QEMU's and guest console's), and they live in the test's temporary
//! directory. When the test panics, every `*.log` file (and its `.log.old`) of that directory
//! is copied, with its relative path, to a directory that stays, and the path is printed.

use std::path::{Path, PathBuf};

/// Copies the log files of `root` into a new directory under the system's temporary
/// directory; returns where, or why not.
pub fn keep(root: &Path) -> std::io::Result<PathBuf> {
    let kept = tempfile::Builder::new()
        .prefix("nimbus-e2e-logs-")
        .tempdir()?
        .keep();
    copy_logs(root, root, &kept)?;
    Ok(kept)
}

fn copy_logs(root: &Path, dir: &Path, to: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)?.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            copy_logs(root, &path, to)?;
        } else if kind.is_file() && is_log(&path) {
            let Ok(rel) = path.strip_prefix(root) else {
                continue;
            };
            let dest = to.join(rel);
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::copy(&path, &dest)?;
        }
    }
    Ok(())
}

fn is_log(path: &Path) -> bool {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    name.ends_with(".log") || name.ends_with(".log.old")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_logs_with_their_paths() {
        let root = tempfile::tempdir().expect("tempdir");
        let host = root.path().join("data/hosts/host1");
        std::fs::create_dir_all(host.join("vms/a")).expect("mkdir");
        std::fs::write(root.path().join("up.log"), "up").expect("write");
        std::fs::write(host.join("agent.log"), "agent").expect("write");
        std::fs::write(host.join("vms/a/qemu.log.old"), "old").expect("write");
        std::fs::write(host.join("vms/a/disk.qcow2"), "disk").expect("write");
        let kept = keep(root.path()).expect("keep");
        let read = |p: &str| std::fs::read_to_string(kept.join(p)).expect(p);
        assert_eq!(read("up.log"), "up");
        assert_eq!(read("data/hosts/host1/agent.log"), "agent");
        assert_eq!(read("data/hosts/host1/vms/a/qemu.log.old"), "old");
        assert!(!kept.join("data/hosts/host1/vms/a/disk.qcow2").exists());
        std::fs::remove_dir_all(kept).expect("clean up");
    }
}
