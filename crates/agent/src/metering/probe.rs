//! Reading a VM's live figures: CPU time and resident memory of its QEMU process (procfs),
//! the allocated size of its disk, and the byte counters of its taps.
//!
//! A tap counts from the host's side: what it transmits the guest receives, so the guest's
//! `rx` is the tap's `tx_bytes` and the other way round. Taps live in the agent's network
//! namespace, whose `/sys/class/net` the agent sees (`ip netns exec` mounts it).

use super::meter::Reading;
use crate::instance::files::VmDir;
use crate::network::tap::tap_name;
use nimbus_qemu::procfs;
use std::path::Path;
use uuid::Uuid;

/// Where the network device counters are.
const SYS_CLASS_NET: &str = "/sys/class/net";

/// Reads the figures of QEMU process `pid` (`None` if it is gone) and of the VM's disk and
/// `nics` taps.
pub fn read(id: Uuid, nics: usize, pid: u32, dir: &VmDir, now_ms: u64) -> Option<Reading> {
    let stat = procfs::read_stat(pid).filter(|s| !s.is_exited())?;
    let (rx, tx) = (0..nics)
        .map(|i| tap_counters(Path::new(SYS_CLASS_NET), &tap_name(id, i)))
        .fold((0, 0), |(a, b), (rx, tx)| (a + rx, b + tx));
    Some(Reading {
        at_ms: now_ms,
        cpu_ns: stat.cpu_time_ns(),
        rss_bytes: procfs::read_rss_bytes(pid),
        storage_bytes: dir.disk_allocated_bytes(),
        net_rx_bytes: rx,
        net_tx_bytes: tx,
    })
}

/// (bytes the guest received, bytes it sent) through the tap `name`; zeros if it does not
/// exist (host networking off).
pub fn tap_counters(sys_class_net: &Path, name: &str) -> (u64, u64) {
    let stat = |f: &str| -> u64 {
        std::fs::read_to_string(sys_class_net.join(name).join("statistics").join(f))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0)
    };
    (stat("tx_bytes"), stat("rx_bytes"))
}

/// Unix time now, in milliseconds.
pub fn now_ms() -> u64 {
    u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_counters_are_seen_from_the_guest() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let stats = tmp.path().join("nt01").join("statistics");
        std::fs::create_dir_all(&stats).expect("mkdir");
        std::fs::write(stats.join("rx_bytes"), "100\n").expect("write");
        std::fs::write(stats.join("tx_bytes"), "2500\n").expect("write");
        assert_eq!(tap_counters(tmp.path(), "nt01"), (2500, 100));
        assert_eq!(tap_counters(tmp.path(), "absent"), (0, 0));
    }

    #[test]
    fn reads_a_live_process() {
        let dir = VmDir::new(std::env::temp_dir().join("nimbus-no-such-vm"));
        let r = read(Uuid::nil(), 0, std::process::id(), &dir, 5).expect("this process");
        assert!(r.rss_bytes > 0);
        assert_eq!((r.at_ms, r.storage_bytes, r.net_rx_bytes), (5, 0, 0));
    }
}
