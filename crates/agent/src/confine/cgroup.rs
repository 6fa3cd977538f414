//! A cgroup per VM: `<root>/nimbus/<host>/<vm id>` with the VM's limits, QEMU moved in right
//! after it starts (its threads follow), removed when the VM is deleted. The host's name is in
//! the path because several agents may share one machine's cgroups (`nimbus up --hosts 2`):
//! during a live migration between them, source and target QEMU of one VM must not share one
//! memory limit (both were OOM-killed at switch-over when they did).
//!
//! cgroup v2 (one unified hierarchy: `cpu.weight`, `memory.max`, `pids.max`) where the
//! host mounts it with those controllers; else the v1 hierarchies (`cpu.shares`,
//! `memory.limit_in_bytes`, `pids.max`), as on hosts booted in hybrid mode.
//!
//! CPU weight: a VM weighs one default share per vCPU, and each parent (`nimbus/<host>`,
//! `nimbus`) weighs the sum of the VMs it holds that run ([`Layout::rebalance`]). With the parents at
//! the default weight, all the VMs of a host together weighed like one busy process: on a
//! host with a dozen busy processes (measured: builds beside TCG guests) a VM got a third of
//! the CPU the same QEMU got outside the cgroup, and booted 2-3x slower. Summed, the VMs
//! compete with the host's processes as their vCPU threads would without cgroups, and
//! between themselves by vCPU.

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
        self.rebalance(host);
        Ok(())
    }

    /// The CPU weight file and its bounds: (hierarchy root, file, min, max).
    fn cpu_weight(&self) -> (&Path, &'static str, u64, u64) {
        match self {
            Layout::V2(root) => (root, "cpu.weight", 1, 10_000),
            Layout::V1 { cpu, .. } => (cpu, "cpu.shares", 2, 262_144),
        }
    }

    /// Sets the weight of `nimbus/<host>` to the sum of its running VMs' and that of
    /// `nimbus` to the sum of every host's running VMs' (several agents may share a machine). Weights only shape CPU
    /// sharing: a failure is logged, never fails a VM. Two agents or VMs changing at once
    /// may write a sum a moment stale; the next VM placed or removed corrects it.
    pub fn rebalance(&self, host: &str) {
        let (root, file, min, max) = self.cpu_weight();
        let top = root.join(PARENT);
        let all: u64 = subdirs(&top).iter().map(|h| vms_weight(h, file)).sum();
        let sums = [
            (top.join(host), vms_weight(&top.join(host), file)),
            (top.clone(), all),
        ];
        for (dir, sum) in sums {
            if !dir.is_dir() {
                continue;
            }
            // No VM: back to one default share, so that nothing holds a large weight.
            let default = if file == "cpu.weight" { 100 } else { 1024 };
            let weight = if sum == 0 {
                default
            } else {
                sum.clamp(min, max)
            };
            if let Err(e) = write(&dir.join(file), &weight.to_string()) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot set the CPU weight of VMs' parent cgroup");
            }
        }
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
        self.rebalance(host);
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
        self.rebalance(host);
    }
}

/// The sub-directories of `dir`.
fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect()
}

/// The sum of the CPU weights (`file`) of the VM cgroups in host directory `dir` that hold
/// a process: a VM whose QEMU is gone weighs nothing.
fn vms_weight(dir: &Path, file: &str) -> u64 {
    let runs = |vm: &PathBuf| {
        std::fs::read_to_string(vm.join("cgroup.procs")).is_ok_and(|p| !p.trim().is_empty())
    };
    subdirs(dir)
        .iter()
        .filter(|vm| runs(vm))
        .filter_map(|vm| std::fs::read_to_string(vm.join(file)).ok())
        .filter_map(|v| v.trim().parse::<u64>().ok())
        .sum()
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
    fn parents_weigh_the_sum_of_their_vms() {
        let root = tempfile::tempdir().expect("tempdir");
        let layout = Layout::V2(root.path().to_path_buf());
        let nimbus = root.path().join(PARENT);
        let vm = |host: &str, name: &str, weight: &str| {
            let dir = nimbus.join(host).join(name);
            std::fs::create_dir_all(&dir).expect("mkdir");
            std::fs::write(dir.join("cpu.weight"), weight).expect("write");
            std::fs::write(dir.join("cgroup.procs"), "4242\n").expect("write");
        };
        let weight =
            |dir: &Path| std::fs::read_to_string(dir.join("cpu.weight")).expect("read weight");
        vm("host1", "a", "100\n");
        vm("host1", "b", "400\n");
        vm("host2", "c", "200\n");
        // A VM whose QEMU is gone (no process) weighs nothing.
        vm("host1", "gone", "800");
        std::fs::write(nimbus.join("host1/gone/cgroup.procs"), "").expect("write");
        // An empty host directory with the default weight adds nothing either.
        std::fs::create_dir_all(nimbus.join("host3")).expect("mkdir");
        std::fs::write(nimbus.join("host3/cpu.weight"), "100").expect("write");
        layout.rebalance("host1");
        assert_eq!(weight(&nimbus.join("host1")), "500");
        // The top sums every host's VMs.
        assert_eq!(weight(&nimbus), "700");
        layout.rebalance("host2");
        assert_eq!(weight(&nimbus.join("host2")), "200");
        assert_eq!(weight(&nimbus), "700");
        // Bounded by the controller's maximum; back to the default when empty.
        vm("host2", "d", "9900");
        layout.rebalance("host2");
        assert_eq!(weight(&nimbus.join("host2")), "10000");
        for name in ["c", "d"] {
            std::fs::remove_dir_all(nimbus.join("host2").join(name)).expect("rm");
        }
        layout.rebalance("host2");
        assert_eq!(weight(&nimbus.join("host2")), "100");
        assert_eq!(weight(&nimbus), "500");
        // v1: cpu.shares, in the cpu hierarchy.
        let v1 = tempfile::tempdir().expect("tempdir");
        let dir = v1.path().join("cpu").join(PARENT).join("host1").join("a");
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("cpu.shares"), "2048").expect("write");
        std::fs::write(dir.join("cgroup.procs"), "4242").expect("write");
        let layout = Layout::V1 {
            cpu: v1.path().join("cpu"),
            memory: v1.path().join("memory"),
            pids: v1.path().join("pids"),
        };
        layout.rebalance("host1");
        let shares = |p: PathBuf| std::fs::read_to_string(p.join("cpu.shares")).expect("read");
        assert_eq!(shares(v1.path().join("cpu").join(PARENT)), "2048");
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
