//! A cgroup per VM: `<root>/nimbus/<host>/<vm id>` with the VM's limits, QEMU moved in right
//! after it starts (its threads follow), removed when the VM is deleted. The host's name is in
//! the path because several agents may share one machine's cgroups (`nimbus up --hosts 2`):
//! during a live migration between them, source and target QEMU of one VM must not share one
//! memory limit (both were OOM-killed at switch-over when they did).
//!
//! cgroup v2 (one unified hierarchy: `cpu.weight`, `memory.max`, `pids.max`) where the
//! host mounts it with those controllers; else the v1 hierarchies (`cpu.shares`,
//! `memory.limit_in_bytes`, `pids.max`), as on hosts booted in hybrid mode.

use super::Limits;
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use uuid::Uuid;

/// Where cgroups are mounted. An agent started by `ip netns exec` (which mounts a sysfs of
/// its own, without them) is told another path in `NIMBUS_CGROUP_ROOT` (`nimbus up` passes
/// its own view, `/proc/<pid>/root/sys/fs/cgroup`).
const ROOT: &str = "/sys/fs/cgroup";
/// The parent of every VM's cgroup.
const PARENT: &str = "nimbus";

/// The cgroup layout of this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// Unified hierarchy at this path.
    V2(PathBuf),
    /// One hierarchy per controller: (cpu, memory, pids).
    V1 {
        cpu: PathBuf,
        memory: PathBuf,
        pids: PathBuf,
    },
}

impl Layout {
    /// The host's layout, if it offers the cpu, memory and pids controllers.
    pub fn probe() -> Option<Self> {
        let given = std::env::var_os("NIMBUS_CGROUP_ROOT").map(PathBuf::from);
        let found = given.as_deref().and_then(Self::probe_at);
        found.or_else(|| Self::probe_at(Path::new(ROOT)))
    }

    fn probe_at(root: &Path) -> Option<Self> {
        let controllers = std::fs::read_to_string(root.join("cgroup.controllers")).ok();
        if controllers.is_some_and(|c| {
            let have: Vec<&str> = c.split_whitespace().collect();
            ["cpu", "memory", "pids"].iter().all(|w| have.contains(w))
        }) {
            return Some(Layout::V2(root.to_path_buf()));
        }
        let v1 = |c: &str| {
            let p = root.join(c);
            p.join("cgroup.procs").is_file().then_some(p)
        };
        Some(Layout::V1 {
            cpu: v1("cpu")?,
            memory: v1("memory")?,
            pids: v1("pids")?,
        })
    }

    /// The directories of VM `id`'s cgroup on `host` (one, or one per v1 controller).
    pub fn dirs(&self, host: &str, id: Uuid) -> Vec<PathBuf> {
        self.roots()
            .iter()
            .map(|root| root.join(PARENT).join(host).join(id.to_string()))
            .collect()
    }

    /// The hierarchy roots (one, or one per v1 controller).
    fn roots(&self) -> Vec<PathBuf> {
        match self {
            Layout::V2(root) => vec![root.clone()],
            Layout::V1 { cpu, memory, pids } => vec![cpu.clone(), memory.clone(), pids.clone()],
        }
    }

    /// Creates VM `id`'s cgroup on `host` with `limits` and moves process `pid` into it.
    pub fn place(&self, host: &str, id: Uuid, pid: u32, limits: &Limits) -> Result<()> {
        let settings = self.settings(limits);
        for (dir, files) in self.dirs(host, id).iter().zip(settings) {
            let host_dir = dir.parent();
            if let Some(nimbus_dir) = host_dir.and_then(Path::parent) {
                mkdir(nimbus_dir)?;
                if let (Layout::V2(root), Some(host_dir)) = (self, host_dir) {
                    enable_controllers(root)?;
                    enable_controllers(nimbus_dir)?;
                    mkdir(host_dir)?;
                    enable_controllers(host_dir)?;
                }
            }
            if let Some(host_dir) = host_dir {
                mkdir(host_dir)?;
            }
            mkdir(dir)?;
            for (file, value) in files {
                write(&dir.join(file), &value)?;
            }
            write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// The files to write in each directory of [`Layout::dirs`].
    fn settings(&self, l: &Limits) -> Vec<Vec<(&'static str, String)>> {
        match self {
            // cpu.weight: 100 is the default share of one task; 100 per vCPU, at most 10000.
            Layout::V2(_) => vec![vec![
                ("cpu.weight", (100 * l.vcpus).min(10_000).to_string()),
                ("memory.max", l.memory_bytes.to_string()),
                ("pids.max", l.pids.to_string()),
            ]],
            Layout::V1 { .. } => vec![
                vec![("cpu.shares", (1024 * l.vcpus as u64).to_string())],
                vec![("memory.limit_in_bytes", l.memory_bytes.to_string())],
                vec![("pids.max", l.pids.to_string())],
            ],
        }
    }

    /// Removes VM `id`'s cgroup once its QEMU is gone (a killed process leaves its cgroup a
    /// moment after the signal: retried for up to 2 s; one still busy is logged, and the next
    /// agent start removes it).
    pub async fn remove(&self, host: &str, id: Uuid) {
        for dir in self.dirs(host, id) {
            for attempt in 0..20 {
                match std::fs::remove_dir(&dir) {
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e) if attempt == 19 => {
                        tracing::warn!(instance_id = %id, dir = %dir.display(), error = %e, "cannot remove the VM's cgroup");
                    }
                    Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
                    Ok(()) => break,
                }
            }
        }
    }

    /// Removes the VM cgroups left empty (a VM whose QEMU was killed by someone else). Only
    /// empty ones can go (the kernel refuses the others), and only those older than a
    /// minute, so that one made for a QEMU about to move in is never taken from under it.
    pub fn sweep(&self, host: &str) {
        let parents: Vec<PathBuf> = self
            .roots()
            .iter()
            .map(|root| root.join(PARENT).join(host))
            .collect();
        let old = |m: &std::fs::Metadata| {
            m.modified()
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age.as_secs() > 60)
        };
        for parent in parents {
            let Ok(entries) = std::fs::read_dir(&parent) else {
                continue;
            };
            for e in entries.flatten() {
                if e.metadata().is_ok_and(|m| m.is_dir() && old(&m)) {
                    let _ = std::fs::remove_dir(e.path());
                }
            }
        }
    }
}

fn mkdir(dir: &Path) -> Result<()> {
    match std::fs::create_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(Error::io("create", dir)(e)),
        _ => Ok(()),
    }
}

fn write(path: &Path, value: &str) -> Result<()> {
    std::fs::write(path, value).map_err(Error::io("write", path))
}

/// Lets the children of `dir` use the cpu, memory and pids controllers (v2).
fn enable_controllers(dir: &Path) -> Result<()> {
    let file = dir.join("cgroup.subtree_control");
    let now = std::fs::read_to_string(&file).unwrap_or_default();
    for c in ["cpu", "memory", "pids"] {
        if !now.split_whitespace().any(|w| w == c) {
            write(&file, &format!("+{c}"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_is_preferred_when_it_has_the_controllers() {
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            root.path().join("cgroup.controllers"),
            "cpu io memory pids\n",
        )
        .expect("write");
        assert_eq!(
            Layout::probe_at(root.path()),
            Some(Layout::V2(root.path().to_path_buf()))
        );
        std::fs::write(root.path().join("cgroup.controllers"), "hugetlb\n").expect("write");
        assert_eq!(Layout::probe_at(root.path()), None, "no v1 either");
        for c in ["cpu", "memory", "pids"] {
            std::fs::create_dir(root.path().join(c)).expect("mkdir");
            std::fs::write(root.path().join(c).join("cgroup.procs"), "").expect("write");
        }
        assert!(matches!(
            Layout::probe_at(root.path()),
            Some(Layout::V1 { .. })
        ));
    }

    #[test]
    fn limits_are_written_per_layout() {
        let l = Limits {
            vcpus: 2,
            memory_bytes: 1 << 30,
            pids: 512,
        };
        let v2 = Layout::V2("/x".into()).settings(&l);
        assert_eq!(
            v2[0],
            vec![
                ("cpu.weight", "200".to_string()),
                ("memory.max", (1u64 << 30).to_string()),
                ("pids.max", "512".to_string())
            ]
        );
        let v1 = Layout::V1 {
            cpu: "/c".into(),
            memory: "/m".into(),
            pids: "/p".into(),
        };
        assert_eq!(v1.settings(&l)[0], vec![("cpu.shares", "2048".to_string())]);
        assert_eq!(
            v1.dirs("host1", Uuid::nil())[1],
            PathBuf::from("/m/nimbus/host1/00000000-0000-0000-0000-000000000000")
        );
    }
}
