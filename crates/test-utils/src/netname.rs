//! The names and subnet of one test cloud's host network, unique per cloud, so that clouds
//! of one test process (tests run on threads) and of parallel test processes never meet.
//!
//! - name: `n` + the pid (5 base-36 digits) + a per-process counter (2 base-36 digits), 8
//!   characters as `nimbus up --net-name` allows, so the links derived from it stay within
//!   IFNAMSIZ (15): `<name>-br`, `<name>-h<i>`; namespaces `<name>-host<i>`. A name whose
//!   bridge or first namespace exists (left by a crashed run whose pid came back) is
//!   skipped. `n` and a digit: no prefix the agent gives its own links (`nt` taps, `nb`,
//!   `nx`, `ng`, `nu`).
//! - subnet: `10.249.X.0/24`, X in [`FIRST_INDEX`]..=[`LAST_INDEX`] (the benchmarks use
//!   240-250), claimed by an exclusive `flock` on `/run/nimbus-test-nets/X.lock` held while
//!   the cloud lives (the kernel drops it when the process dies, however it dies), and only
//!   if no interface of the machine already has an address in it.

use anyhow::{bail, Context};
use nix::fcntl::{Flock, FlockArg};
use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

/// The subnets test clouds take.
pub const FIRST_INDEX: u8 = 100;
pub const LAST_INDEX: u8 = 239;
const LOCKS: &str = "/run/nimbus-test-nets";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A cloud's network name and subnet, the subnet claimed while this lives.
pub struct NetName {
    pub name: String,
    pub index: u8,
    _claim: Option<Flock<File>>,
}

impl NetName {
    /// A new name and, with `claim_subnet` (a cloud in namespaces, as root), a free subnet.
    pub fn new(claim_subnet: bool) -> anyhow::Result<Self> {
        let pid = std::process::id();
        let name = loop {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            if n >= 36 * 36 {
                bail!("more than {} test clouds in one process", 36 * 36);
            }
            let name = name_of(pid, n);
            if !in_use(&name) {
                break name;
            }
        };
        let (index, claim) = if claim_subnet {
            let (index, lock) = claim(pid)?;
            (index, Some(lock))
        } else {
            (
                FIRST_INDEX + (pid % u32::from(LAST_INDEX - FIRST_INDEX)) as u8,
                None,
            )
        };
        Ok(Self {
            name,
            index,
            _claim: claim,
        })
    }
}

/// `n`, `pid` in 5 base-36 digits, `n` in 2.
fn name_of(pid: u32, n: u32) -> String {
    format!("n{}{}", base36(pid, 5), base36(n, 2))
}

/// `v` in `width` base-36 digits (the lowest ones, if it has more).
fn base36(mut v: u32, width: usize) -> String {
    let mut digits = vec![b'0'; width];
    for d in digits.iter_mut().rev() {
        *d = b"0123456789abcdefghijklmnopqrstuvwxyz"[(v % 36) as usize];
        v /= 36;
    }
    String::from_utf8_lossy(&digits).into_owned()
}

/// Whether a cloud's bridge or first namespace of that name exists.
fn in_use(name: &str) -> bool {
    Path::new("/sys/class/net")
        .join(format!("{name}-br"))
        .exists()
        || Path::new("/run/netns")
            .join(format!("{name}-host1"))
            .exists()
}

/// The first free subnet from one that depends on the pid, and its lock.
fn claim(pid: u32) -> anyhow::Result<(u8, Flock<File>)> {
    std::fs::create_dir_all(LOCKS).with_context(|| format!("cannot create {LOCKS}"))?;
    let count = u32::from(LAST_INDEX - FIRST_INDEX) + 1;
    for k in 0..count {
        let index = FIRST_INDEX + ((pid + k) % count) as u8;
        let path = Path::new(LOCKS).join(format!("{index}.lock"));
        let file =
            File::create(&path).with_context(|| format!("cannot open {}", path.display()))?;
        let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) else {
            continue;
        };
        if !subnet_has_addresses(index)? {
            return Ok((index, lock));
        }
    }
    bail!("every test subnet 10.249.{FIRST_INDEX}-{LAST_INDEX}.0/24 is taken")
}

/// Whether an interface of this namespace has an address in `10.249.<index>.0/24`.
fn subnet_has_addresses(index: u8) -> anyhow::Result<bool> {
    let out = std::process::Command::new("ip")
        .args([
            "-4",
            "-o",
            "addr",
            "show",
            "to",
            &format!("10.249.{index}.0/24"),
        ])
        .output()
        .context("cannot run ip (install iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip addr show: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(!out.stdout.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_the_links_made_from_them_and_never_repeat() {
        let mut seen = std::collections::HashSet::new();
        for pid in [1, 35, 36, 32768, 4_194_304] {
            for n in [0, 1, 35, 36, 1295] {
                let name = name_of(pid, n);
                assert_eq!(name.len(), 8, "{name}");
                assert!(format!("{name}-h99").len() <= 15);
                assert!(!name.starts_with("nt") && !name.starts_with("nb"), "{name}");
                assert!(seen.insert(name.clone()), "{name} twice");
            }
        }
        assert_eq!(name_of(36, 1), "n0001001");
    }

    #[test]
    fn two_clouds_of_one_process_get_their_own_names_and_subnets() {
        let claim_subnets = nix::unistd::geteuid().is_root();
        let a = NetName::new(claim_subnets).expect("a");
        let b = NetName::new(claim_subnets).expect("b");
        assert_ne!(a.name, b.name);
        if claim_subnets {
            assert_ne!(a.index, b.index);
            assert!((FIRST_INDEX..=LAST_INDEX).contains(&b.index));
            // Released with the cloud: the next claim may take it again.
            let index = a.index;
            drop(a);
            let path = Path::new(LOCKS).join(format!("{index}.lock"));
            let file = File::create(path).expect("lock file");
            assert!(Flock::lock(file, FlockArg::LockExclusiveNonblock).is_ok());
        }
    }
}
