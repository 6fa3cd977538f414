//! Placement groups: a filter (spread) or a preference (pack) on top of [`place`].
//!
//! - `spread`: members on distinct hosts. Hosts that already hold a member are filtered out;
//!   when that leaves no host for a request that would otherwise fit, the error says so
//!   (instead of a capacity error), naming the hosts taken.
//! - `pack`: members together. Among the hosts that fit, those holding members come first;
//!   when none of them fits, any host that fits is taken (a preference, not a rule).

use crate::placement::{place, NoCapacity, Strategy};
use crate::{HostCapacity, Resources};
use serde::{Deserialize, Serialize};

/// A placement group's policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupPolicy {
    Spread,
    Pack,
}

/// The group a request belongs to, and where its other members are.
#[derive(Debug, Clone, Copy)]
pub struct GroupPlacement<'a> {
    pub name: &'a str,
    pub policy: GroupPolicy,
    /// Hosts of the group's other members.
    pub occupied: &'a [String],
}

/// Why no host was chosen.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlacementError {
    #[error(transparent)]
    NoCapacity(#[from] NoCapacity),
    #[error(
        "placement group {group} (spread) already has a member on every host that could take \
         this one ({}); add a host or remove a member",
        occupied.join(", ")
    )]
    SpreadImpossible {
        group: String,
        occupied: Vec<String>,
    },
}

/// [`place`], honouring the request's placement group if it has one.
pub fn place_in_group<'a>(
    hosts: &'a [HostCapacity],
    want: &Resources,
    strategy: Strategy,
    group: Option<GroupPlacement<'_>>,
) -> Result<&'a HostCapacity, PlacementError> {
    let Some(group) = group else {
        return Ok(place(hosts, want, strategy)?);
    };
    let taken = |h: &HostCapacity| group.occupied.contains(&h.name);
    match group.policy {
        GroupPolicy::Spread => {
            let free: Vec<HostCapacity> = hosts.iter().filter(|h| !taken(h)).cloned().collect();
            match place(&free, want, strategy) {
                Ok(chosen) => Ok(by_name(hosts, &chosen.name)),
                Err(e) => match place(hosts, want, strategy) {
                    // It would fit, but only beside another member.
                    Ok(_) => {
                        let mut occupied: Vec<String> = hosts
                            .iter()
                            .filter(|h| h.schedulable && h.fits(want) && taken(h))
                            .map(|h| h.name.clone())
                            .collect();
                        occupied.sort();
                        Err(PlacementError::SpreadImpossible {
                            group: group.name.to_string(),
                            occupied,
                        })
                    }
                    Err(_) => Err(e.into()),
                },
            }
        }
        GroupPolicy::Pack => {
            let together: Vec<HostCapacity> = hosts.iter().filter(|h| taken(h)).cloned().collect();
            match place(&together, want, strategy) {
                Ok(chosen) => Ok(by_name(hosts, &chosen.name)),
                Err(_) => Ok(place(hosts, want, strategy)?),
            }
        }
    }
}

/// The host of `hosts` named `name` (chosen from a filtered copy of them).
fn by_name<'a>(hosts: &'a [HostCapacity], name: &str) -> &'a HostCapacity {
    hosts.iter().find(|h| h.name == name).unwrap_or(&hosts[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, mem_used: u64) -> HostCapacity {
        HostCapacity {
            name: name.into(),
            schedulable: true,
            physical: Resources {
                vcpus: 8,
                memory_mib: 8192,
                disk_gib: 100,
            },
            allocated: Resources {
                vcpus: 0,
                memory_mib: mem_used,
                disk_gib: 0,
            },
            ratios: crate::AllocationRatios::default(),
        }
    }

    fn want(memory_mib: u64) -> Resources {
        Resources {
            vcpus: 1,
            memory_mib,
            disk_gib: 1,
        }
    }

    fn group<'a>(policy: GroupPolicy, occupied: &'a [String]) -> Option<GroupPlacement<'a>> {
        Some(GroupPlacement {
            name: "g1",
            policy,
            occupied,
        })
    }

    #[test]
    fn spread_avoids_members_and_refuses_with_the_reason() {
        let hosts = [host("host1", 0), host("host2", 4096)];
        let none: Vec<String> = Vec::new();
        let chosen = place_in_group(
            &hosts,
            &want(256),
            Strategy::Spread,
            group(GroupPolicy::Spread, &none),
        );
        assert_eq!(chosen.expect("placed").name, "host1");
        let one = vec!["host1".to_string()];
        let chosen = place_in_group(
            &hosts,
            &want(256),
            Strategy::Spread,
            group(GroupPolicy::Spread, &one),
        );
        assert_eq!(
            chosen.expect("placed").name,
            "host2",
            "the emptier host holds a member"
        );
        let both = vec!["host1".to_string(), "host2".to_string()];
        let err = place_in_group(
            &hosts,
            &want(256),
            Strategy::Spread,
            group(GroupPolicy::Spread, &both),
        )
        .expect_err("no host left");
        assert_eq!(
            err.to_string(),
            "placement group g1 (spread) already has a member on every host that could take \
             this one (host1, host2); add a host or remove a member"
        );
        let err = place_in_group(
            &hosts,
            &want(9000),
            Strategy::Spread,
            group(GroupPolicy::Spread, &one),
        )
        .expect_err("too big anyway");
        assert!(matches!(err, PlacementError::NoCapacity(_)), "{err}");
    }

    #[test]
    fn pack_prefers_members_hosts_while_they_fit() {
        let hosts = [host("host1", 0), host("host2", 7936)];
        let on2 = vec!["host2".to_string()];
        let chosen = place_in_group(
            &hosts,
            &want(256),
            Strategy::Spread,
            group(GroupPolicy::Pack, &on2),
        );
        assert_eq!(chosen.expect("placed").name, "host2", "beside its member");
        let chosen = place_in_group(
            &hosts,
            &want(512),
            Strategy::Spread,
            group(GroupPolicy::Pack, &on2),
        );
        assert_eq!(chosen.expect("placed").name, "host1", "full: elsewhere");
        let chosen = place_in_group(&hosts, &want(256), Strategy::Spread, None);
        assert_eq!(
            chosen.expect("placed").name,
            "host1",
            "no group: the strategy"
        );
    }
}
