//! Filter and weigh.

use crate::{HostCapacity, Resources};
use serde::{Deserialize, Serialize};
use std::fmt;

/// How to choose among the hosts that fit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Most free memory first: spreads load and blast radius (the default).
    #[default]
    Spread,
    /// Least free memory first: fills hosts so others can be drained or powered off.
    Pack,
}

/// No host can take the request; says what the best host had free.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct NoCapacity {
    pub wanted: Resources,
    /// Number of hosts that were up and enabled.
    pub schedulable_hosts: usize,
    /// Largest free amounts over the schedulable hosts (each maximised separately).
    pub largest_free: Resources,
}

impl fmt::Display for NoCapacity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.schedulable_hosts == 0 {
            return write!(
                f,
                "no host is up and enabled; check `nimbus host list` (enable a host or start its agent)"
            );
        }
        let w = &self.wanted;
        let l = &self.largest_free;
        let mut short = Vec::new();
        if l.memory_mib < w.memory_mib {
            short.push(format!("{} MiB of memory", w.memory_mib));
        }
        if l.vcpus < w.vcpus {
            short.push(format!("{} vCPUs", w.vcpus));
        }
        if l.disk_gib < w.disk_gib {
            short.push(format!("{} GiB of disk", w.disk_gib));
        }
        if short.is_empty() {
            short.push(format!(
                "{} vCPUs, {} MiB and {} GiB together",
                w.vcpus, w.memory_mib, w.disk_gib
            ));
        }
        write!(
            f,
            "no host has {} free; largest free: {} vCPUs, {} MiB memory, {} GiB disk \
             (over {} host(s)); choose a smaller flavor or add capacity",
            short.join(", "),
            l.vcpus,
            l.memory_mib,
            l.disk_gib,
            self.schedulable_hosts
        )
    }
}

/// Picks the host for a request, or says why none fits. Ties break by host name so that
/// placement is deterministic.
pub fn place<'a>(
    hosts: &'a [HostCapacity],
    want: &Resources,
    strategy: Strategy,
) -> Result<&'a HostCapacity, NoCapacity> {
    let schedulable: Vec<&HostCapacity> = hosts.iter().filter(|h| h.schedulable).collect();
    let mut fitting: Vec<&HostCapacity> = schedulable
        .iter()
        .copied()
        .filter(|h| h.fits(want))
        .collect();
    fitting.sort_by(|a, b| {
        let (fa, fb) = (a.free(), b.free());
        let by_memory = match strategy {
            Strategy::Spread => fb.memory_mib.cmp(&fa.memory_mib),
            Strategy::Pack => fa.memory_mib.cmp(&fb.memory_mib),
        };
        let by_cpu = match strategy {
            Strategy::Spread => fb.vcpus.cmp(&fa.vcpus),
            Strategy::Pack => fa.vcpus.cmp(&fb.vcpus),
        };
        by_memory.then(by_cpu).then_with(|| a.name.cmp(&b.name))
    });
    fitting.first().copied().ok_or_else(|| NoCapacity {
        wanted: *want,
        schedulable_hosts: schedulable.len(),
        largest_free: schedulable
            .iter()
            .map(|h| h.free())
            .fold(Resources::default(), |acc, f| Resources {
                vcpus: acc.vcpus.max(f.vcpus),
                memory_mib: acc.memory_mib.max(f.memory_mib),
                disk_gib: acc.disk_gib.max(f.disk_gib),
            }),
    })
}

/// Like [`place`], but hosts for which `preferred` holds (e.g. those that cache the image
/// already, so the guest starts without a download) come before the others; the strategy
/// orders each group.
pub fn place_preferring<'a>(
    hosts: &'a [HostCapacity],
    want: &Resources,
    strategy: Strategy,
    preferred: impl Fn(&HostCapacity) -> bool,
) -> Result<&'a HostCapacity, NoCapacity> {
    let favoured: Vec<HostCapacity> = hosts.iter().filter(|h| preferred(h)).cloned().collect();
    if let Ok(best) = place(&favoured, want, strategy) {
        if let Some(h) = hosts.iter().find(|h| h.name == best.name) {
            return Ok(h);
        }
    }
    place(hosts, want, strategy)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AllocationRatios;

    fn host(name: &str, mem_free_used: u64, schedulable: bool) -> HostCapacity {
        HostCapacity {
            name: name.into(),
            schedulable,
            physical: Resources {
                vcpus: 2,
                memory_mib: 8192,
                disk_gib: 100,
            },
            allocated: Resources {
                vcpus: 1,
                memory_mib: mem_free_used,
                disk_gib: 1,
            },
            ratios: AllocationRatios::default(),
        }
    }

    fn small() -> Resources {
        Resources {
            vcpus: 1,
            memory_mib: 512,
            disk_gib: 1,
        }
    }

    #[test]
    fn hosts_holding_the_image_come_first_when_they_fit() {
        let hosts = [
            host("a", 0, true),
            host("b", 4096, true),
            host("c", 8000, true),
            host("d", 1024, false),
        ];
        let name = |r: Result<&HostCapacity, NoCapacity>| r.map(|h| h.name.clone()).ok();
        let cached = |names: &'static [&'static str]| {
            move |h: &HostCapacity| names.contains(&h.name.as_str())
        };
        // b holds it: chosen over a, which spread alone would pick.
        assert_eq!(
            name(place_preferring(
                &hosts,
                &small(),
                Strategy::Spread,
                cached(&["b"])
            )),
            Some("b".into())
        );
        // c holds it but is full, d is disabled: the strategy among all the others.
        assert_eq!(
            name(place_preferring(
                &hosts,
                &small(),
                Strategy::Spread,
                cached(&["c", "d"])
            )),
            Some("a".into())
        );
        assert_eq!(
            name(place_preferring(&hosts, &small(), Strategy::Spread, |_| {
                false
            })),
            Some("a".into())
        );
    }

    #[test]
    fn spread_picks_most_free_memory() {
        let hosts = [host("a", 4096, true), host("b", 1024, true)];
        assert_eq!(
            place(&hosts, &small(), Strategy::Spread).map(|h| &h.name[..]),
            Ok("b")
        );
    }

    #[test]
    fn pack_picks_least_free_memory() {
        let hosts = [host("a", 4096, true), host("b", 1024, true)];
        assert_eq!(
            place(&hosts, &small(), Strategy::Pack).map(|h| &h.name[..]),
            Ok("a")
        );
    }

    #[test]
    fn ties_break_by_name() {
        let hosts = [host("b", 0, true), host("a", 0, true)];
        assert_eq!(
            place(&hosts, &small(), Strategy::Spread).map(|h| &h.name[..]),
            Ok("a")
        );
    }

    #[test]
    fn disabled_hosts_are_skipped() {
        let hosts = [host("a", 4096, true), host("b", 0, false)];
        assert_eq!(
            place(&hosts, &small(), Strategy::Spread).map(|h| &h.name[..]),
            Ok("a")
        );
    }

    #[test]
    fn cpu_ratio_allows_overcommit() {
        // 2 physical CPUs x 4.0 = 8 vCPUs offered, 1 allocated: 7 fit, 8 do not.
        let hosts = [host("a", 0, true)];
        let mut want = small();
        want.vcpus = 7;
        assert!(place(&hosts, &want, Strategy::Spread).is_ok());
        want.vcpus = 8;
        assert!(place(&hosts, &want, Strategy::Spread).is_err());
    }

    #[test]
    fn no_capacity_names_the_largest_free() {
        let hosts = [host("a", 4096, true), host("b", 1024, true)];
        let want = Resources {
            vcpus: 1,
            memory_mib: 65536,
            disk_gib: 1,
        };
        let err = place(&hosts, &want, Strategy::Spread).expect_err("must not fit");
        assert_eq!(err.largest_free.memory_mib, 7168);
        let msg = err.to_string();
        assert!(
            msg.contains("no host has 65536 MiB of memory free"),
            "{msg}"
        );
        assert!(
            msg.contains("largest free: 7 vCPUs, 7168 MiB memory"),
            "{msg}"
        );
    }

    #[test]
    fn no_schedulable_host_says_so() {
        let hosts = [host("a", 0, false)];
        let err = place(&hosts, &small(), Strategy::Spread).expect_err("must not fit");
        assert!(err.to_string().contains("no host is up and enabled"));
    }
}
