//! Confinement of QEMU processes, so that a guest that escapes into its VMM gets little:
//!
//! - [`user`]: every VM's QEMU runs as a user of its own (a uid from a range no account
//!   uses; one group for all VM users, which only opens `/dev/userfaultfd`), without
//!   capabilities, under QEMU's seccomp sandbox. QEMU opens what it needs (disk, kernel, taps, sockets) at start-up as the
//!   agent, then drops to that user (`-run-with user=`). The VM's directory (and its disk
//!   directory on shared storage) belongs to that user with mode 0700: no other VM's QEMU
//!   can read its disk, console or memory files. One user per VM rather than one for all:
//!   with a shared user, an escaped QEMU could open every other VM's disk.
//! - [`cgroup`]: every VM's QEMU runs in a cgroup of its own: CPU weight from its vCPUs,
//!   memory limit = its memory + [`memory_overhead_mib`], a pids limit. cgroup v2 where the
//!   host has it, else the v1 hierarchies (cpu, memory, pids).
//! - [`console`]: the console log a guest writes cannot fill the host's disk.
//!
//! Confinement needs root (to change owners and create cgroups); an agent run as another
//! user runs QEMU as itself. `NIMBUS_CONFINE=0` turns it off (to measure its cost).

pub mod cgroup;
pub mod console;
pub mod user;

use crate::error::{Error, Result};
use crate::instance::files::VmDir;
use nimbus_agent_api::VmSpec;
use nimbus_qemu::QemuConfig;
use std::sync::OnceLock;
use uuid::Uuid;

/// At most this many tasks (processes and threads) per QEMU: vCPU threads, I/O workers
/// (QEMU's pool grows to 64), a few helpers.
pub const PIDS_MAX: u32 = 512;

/// Memory a QEMU process needs beyond its guest's RAM: device emulation, block layer
/// caches, and under TCG the translated-code cache. Measured RSS over guest RAM for the
/// default guest under TCG: ~150 MiB; doubled for headroom, plus 1/16 of the guest's RAM
/// for page tables and caches that grow with it.
pub fn memory_overhead_mib(memory_mib: u64) -> u64 {
    256 + memory_mib / 16
}

/// The limits of a VM's cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub vcpus: u32,
    pub memory_bytes: u64,
    pub pids: u32,
}

impl Limits {
    pub fn of(spec: &VmSpec) -> Self {
        let mib = spec.memory_mib + memory_overhead_mib(spec.memory_mib);
        Self {
            vcpus: spec.vcpus.max(1),
            memory_bytes: mib << 20,
            pids: PIDS_MAX,
        }
    }
}

/// Whether this agent confines its QEMU processes (root, and not turned off).
pub fn enabled() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| {
        let root = nix::unistd::geteuid().is_root();
        let off = std::env::var("NIMBUS_CONFINE").is_ok_and(|v| v == "0");
        if root && off {
            tracing::warn!("NIMBUS_CONFINE=0: QEMU runs as root, without cgroups");
        }
        root && !off
    })
}

/// The name of this agent's host, set once at start ([`set_host`]); in the path of its VMs'
/// cgroups.
fn host() -> &'static str {
    HOST.get().map(String::as_str).unwrap_or("local")
}

static HOST: OnceLock<String> = OnceLock::new();

/// Names this process's host (once, at agent start, before any VM is launched or adopted;
/// one agent per process: a second call keeps the first name). Only `[A-Za-z0-9_.-]` is
/// kept, so the name is one path segment.
pub fn set_host(name: &str) {
    let segment: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let segment = if segment.is_empty() || segment.starts_with('.') {
        format!("_{segment}")
    } else {
        segment
    };
    let _ = HOST.set(segment);
}

/// The host's cgroup layout, probed once; `None` (logged) where it has no usable one.
fn layout() -> Option<&'static cgroup::Layout> {
    static LAYOUT: OnceLock<Option<cgroup::Layout>> = OnceLock::new();
    LAYOUT
        .get_or_init(|| {
            let l = cgroup::Layout::probe();
            if l.is_none() {
                tracing::warn!("no cgroup hierarchy with the cpu, memory and pids controllers: VMs run without limits");
            }
            l
        })
        .as_ref()
}

/// Before a launch: the VM's user, its files given to it, QEMU told to drop to it.
pub fn prepare(config: &mut QemuConfig, dir: &VmDir, id: Uuid) -> Result<()> {
    if !enabled() {
        return Ok(());
    }
    let vms_dir = dir
        .dir()
        .parent()
        .ok_or_else(|| Error::Internal(format!("{} has no parent", dir.dir().display())))?;
    user::grant_userfaultfd();
    let run_as = user::user_of(vms_dir, dir.dir(), id)?;
    // A disk on shared storage lives in a directory named by the VM's id: it is the VM's.
    let disk = dir.disk_path();
    let disk_dir = disk
        .parent()
        .filter(|p| *p != dir.dir() && p.file_name() == Some(id.to_string().as_ref()));
    user::give(dir.dir(), disk_dir, run_as)?;
    config.run_as = Some(run_as);
    Ok(())
}

/// Right after a launch: QEMU `pid` into the VM's cgroup with its limits.
pub fn place(spec: &VmSpec, pid: u32) -> Result<()> {
    match (enabled(), layout()) {
        (true, Some(l)) => l.place(host(), spec.id, pid, &Limits::of(spec)),
        _ => Ok(()),
    }
}

/// After the VM is deleted: its cgroup goes.
pub async fn release(id: Uuid) {
    if let (true, Some(l)) = (enabled(), layout()) {
        l.remove(host(), id).await;
    }
}

/// At agent start: cgroups of VMs killed behind the agent's back go.
pub fn sweep() {
    if let (true, Some(l)) = (enabled(), layout()) {
        l.sweep(host());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_follow_the_flavor() {
        let mut spec = crate::test_support::blank_spec(uuid::Uuid::nil(), Vec::new());
        spec.vcpus = 2;
        spec.memory_mib = 1024;
        let l = Limits::of(&spec);
        assert_eq!(l.vcpus, 2);
        assert_eq!(l.memory_bytes, (1024 + 256 + 64) << 20);
        assert_eq!(l.pids, PIDS_MAX);
    }
}
