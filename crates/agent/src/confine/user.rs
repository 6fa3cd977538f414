//! The user a VM's QEMU runs as, and the files it owns.
//!
//! The uid is `UID_BASE` plus a number derived from the VM's id, moved on if another VM of
//! this host has it; it is recorded as the owner of the VM's directory, so it stays the same
//! across restarts, re-adoption and snapshots. Only what belongs to the VM is given to it:
//! its directory and what is in it, and its disk directory on shared storage.

use crate::error::{Error, Result};
use nimbus_qemu::config::RunAs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Mutex;
use uuid::Uuid;

/// First uid of VM users; far above any account (`/etc/login.defs` ends at 60000) and below
/// the 2^31 limit some tools assume.
pub const UID_BASE: u32 = 1_000_000_000;
/// The group of every VM user. It opens `/dev/userfaultfd` to them (QEMU's background
/// snapshots need userfaultfd, which the kernel refuses unprivileged processes otherwise)
/// and nothing else: VM files are closed to their group (0600, directories 0700).
pub const VM_GID: u32 = UID_BASE;
/// How many VM users there can be.
pub const UID_RANGE: u32 = 1 << 24;

/// Serialises choices of a uid within this agent.
static CHOOSING: Mutex<()> = Mutex::new(());

/// Whether `uid` is a VM user's.
pub fn is_vm_uid(uid: u32) -> bool {
    (UID_BASE + 1..UID_BASE + UID_RANGE).contains(&uid)
}

/// Opens `/dev/userfaultfd` (Linux 6.1+) to the VM users' group, once. Without it (older
/// kernels), snapshots of confined VMs need `vm.unprivileged_userfaultfd=1`.
pub fn grant_userfaultfd() {
    static DONE: std::sync::Once = std::sync::Once::new();
    DONE.call_once(|| {
        let dev = Path::new("/dev/userfaultfd");
        if !dev.exists() {
            tracing::warn!(
                "no /dev/userfaultfd: snapshots of confined VMs need vm.unprivileged_userfaultfd=1"
            );
            return;
        }
        let res = std::os::unix::fs::chown(dev, Some(0), Some(VM_GID))
            .and_then(|_| std::fs::set_permissions(dev, std::fs::Permissions::from_mode(0o660)));
        if let Err(e) = res {
            tracing::warn!(error = %e, "cannot open /dev/userfaultfd to the VM users");
        }
    });
}

/// The user of the VM whose directory is `dir` (in `vms_dir`), chosen on first use.
pub fn user_of(vms_dir: &Path, dir: &Path, id: Uuid) -> Result<RunAs> {
    let _one = CHOOSING.lock().unwrap_or_else(|p| p.into_inner());
    let meta = std::fs::metadata(dir).map_err(Error::io("stat", dir))?;
    if is_vm_uid(meta.uid()) {
        return Ok(RunAs {
            uid: meta.uid(),
            gid: VM_GID,
        });
    }
    let taken = taken_uids(vms_dir, dir);
    let start = u32::from_be_bytes([
        id.as_bytes()[0],
        id.as_bytes()[1],
        id.as_bytes()[2],
        id.as_bytes()[3],
    ]) % UID_RANGE;
    let uid = (0..UID_RANGE)
        // UID_BASE itself is left out: its number is the group's.
        .map(|i| UID_BASE + 1 + (start + i) % (UID_RANGE - 1))
        .find(|u| !taken.contains(u))
        .ok_or_else(|| Error::Internal("no free VM user left".into()))?;
    Ok(RunAs { uid, gid: VM_GID })
}

fn taken_uids(vms_dir: &Path, except: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir(vms_dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.path() != except)
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.uid())
        .filter(|u| is_vm_uid(*u))
        .collect()
}

/// Gives `dir` and everything in it to `user`; the directory is closed to everyone else
/// (0700) and files to everyone but their owner. Symbolic links are not followed:
/// `disk_dir` (the target of a link to shared storage, if any) is given separately.
pub fn give(dir: &Path, disk_dir: Option<&Path>, user: RunAs) -> Result<()> {
    give_tree(dir, user)?;
    if let Some(d) = disk_dir {
        give_tree(d, user)?;
    }
    Ok(())
}

fn give_tree(dir: &Path, user: RunAs) -> Result<()> {
    give_one(dir, user)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(Error::io("chmod", dir))?;
    for entry in std::fs::read_dir(dir).map_err(Error::io("list", dir))? {
        let entry = entry.map_err(Error::io("list", dir))?;
        let path = entry.path();
        let given = match entry.file_type() {
            Ok(kind) if kind.is_symlink() => {
                std::os::unix::fs::lchown(&path, Some(user.uid), Some(user.gid))
                    .map_err(Error::io("chown", &path))
            }
            Ok(kind) if kind.is_dir() => give_tree(&path, user),
            Ok(_) => give_file(&path, user),
            Err(e) => Err(Error::io("stat", &path)(e)),
        };
        // The agent's own tasks keep writing in the directory while a VM starts (the meter's
        // temporary file is renamed away at any time): what is gone needs no owner.
        match given {
            Err(e) if path.symlink_metadata().is_err() => {
                tracing::debug!(path = %path.display(), error = %e.chain(), "gone while given to the VM user");
            }
            other => other?,
        }
    }
    Ok(())
}

/// Gives one file the agent made for a VM (e.g. a new disk layer) to the VM's user, when
/// the VM has one (its directory `dir` belongs to a VM user).
pub fn give_new_file(dir: &Path, file: &Path) -> Result<()> {
    let meta = std::fs::metadata(dir).map_err(Error::io("stat", dir))?;
    if !is_vm_uid(meta.uid()) {
        return Ok(());
    }
    give_file(
        file,
        RunAs {
            uid: meta.uid(),
            gid: VM_GID,
        },
    )
}

fn give_file(path: &Path, user: RunAs) -> Result<()> {
    give_one(path, user)?;
    let meta = std::fs::symlink_metadata(path).map_err(Error::io("stat", path))?;
    let mode = meta.mode() & 0o700;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(Error::io("chmod", path))
}

fn give_one(path: &Path, user: RunAs) -> Result<()> {
    std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid)).map_err(Error::io("chown", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_vm_gets_its_own_user_which_stays() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: changing owners needs root");
            return;
        }
        let vms = tempfile::tempdir().expect("tempdir");
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let (da, db) = (
            vms.path().join(a.to_string()),
            vms.path().join(b.to_string()),
        );
        for d in [&da, &db] {
            std::fs::create_dir(d).expect("mkdir");
            std::fs::write(d.join("disk.qcow2"), b"disk").expect("write");
        }
        let ua = user_of(vms.path(), &da, a).expect("user");
        give(&da, None, ua).expect("give");
        let ub = user_of(vms.path(), &db, b).expect("user");
        assert_ne!(ua, ub);
        assert!(is_vm_uid(ua.uid) && is_vm_uid(ub.uid));
        assert_eq!(user_of(vms.path(), &da, a).expect("again"), ua, "stable");
        let m = std::fs::metadata(da.join("disk.qcow2")).expect("stat");
        assert_eq!((m.uid(), m.mode() & 0o777), (ua.uid, 0o600));
        let m = std::fs::metadata(&da).expect("stat");
        assert_eq!((m.uid(), m.mode() & 0o777), (ua.uid, 0o700));
    }

    #[test]
    fn files_renamed_away_while_the_directory_is_given_do_not_fail_it() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: changing owners needs root");
            return;
        }
        let vms = tempfile::tempdir().expect("tempdir");
        let id = Uuid::new_v4();
        let dir = vms.path().join(id.to_string());
        std::fs::create_dir(&dir).expect("mkdir");
        std::fs::write(dir.join("disk.qcow2"), b"disk").expect("write");
        // The meter rewrites its file in a loop, as it does while a VM starts.
        let writes = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let writer = {
            let (writes, meter) = (writes.clone(), dir.join("meter.json"));
            std::thread::spawn(move || {
                while writes.load(std::sync::atomic::Ordering::Relaxed) < 800 {
                    crate::instance::files::write_json(&meter, &vec![1u8; 64]).expect("meter");
                    writes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            })
        };
        let user = user_of(vms.path(), &dir, id).expect("user");
        while !writer.is_finished() {
            give(&dir, None, user).expect("giving never fails on a vanished file");
        }
        writer.join().expect("writer");
    }
}
