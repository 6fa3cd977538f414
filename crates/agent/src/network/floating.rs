//! Floating IPs on a host: the 1:1 NATs the controller sends (in the host firewall) are made
//! in the routers of their networks ([`super::router::set_nats`]); here, the host's side:
//! a route to each floating IP held here through its router, and the host answering ARP for
//! it on its uplink (a proxy entry), so the uplink network (the machine of `nimbus up`, or an
//! operator's router) reaches it with no route of its own. When a host takes a floating IP
//! (attach, or a migration's target) it announces it with a gratuitous ARP, so the uplink
//! network forgets the previous host at once.
//!
//! A host routes a floating IP as soon as the controller sends it (a migration's target gets
//! it before the VM arrives), but claims it on the uplink (answers ARP, announces) only once
//! its instance's port is here and running ([`claimed`]): until the VM resumes on a target,
//! the source's router is the only one that can reach it (gateway frames never cross the
//! VXLAN), so a target that announced early took the address's traffic into a dead end for
//! the whole migration.
//!
//! ```text
//! ip route replace <floating>/32 via <router transit> dev nu<vni> proto 77
//! ip neigh replace proxy <floating> dev <uplink>
//! ```
//! The routes of proto [`ROUTE_PROTO`] are this module's: what is there and no longer held
//! goes, with its proxy entry.

use super::command::Shell;
use super::error::NetError;
use super::router::{transit_address, UPLINK_PREFIX};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

/// The routing protocol number marking floating-IP routes (free in iproute2's rt_protos).
pub const ROUTE_PROTO: &str = "77";

#[derive(Deserialize)]
struct Route {
    dst: String,
    #[serde(default)]
    dev: Option<String>,
}

#[derive(Deserialize)]
struct AddrInfo {
    #[serde(default)]
    local: Option<String>,
}

#[derive(Deserialize)]
struct Iface {
    ifname: String,
    #[serde(default)]
    addr_info: Vec<AddrInfo>,
}

/// The device holding `underlay` (the host's uplink), if any.
pub async fn uplink_device(shell: &Shell, underlay: IpAddr) -> Result<Option<String>, NetError> {
    let cmd = shell.ip(&["-j", "addr", "show"]);
    let out = cmd.run().await?;
    let ifaces: Vec<Iface> = serde_json::from_str(&out).map_err(|e| NetError::Output {
        command: cmd.to_string(),
        detail: e.to_string(),
    })?;
    let want = underlay.to_string();
    Ok(ifaces
        .into_iter()
        .find(|i| {
            i.addr_info
                .iter()
                .any(|a| a.local.as_deref() == Some(&want))
        })
        .map(|i| i.ifname))
}

/// The floating IPs routed here now, with the router device each goes to.
async fn routed(shell: &Shell) -> Result<BTreeMap<Ipv4Addr, String>, NetError> {
    let cmd = shell.ip(&["-j", "-4", "route", "show", "proto", ROUTE_PROTO]);
    let out = cmd.run().await?;
    if out.trim().is_empty() {
        return Ok(BTreeMap::new());
    }
    let routes: Vec<Route> = serde_json::from_str(&out).map_err(|e| NetError::Output {
        command: cmd.to_string(),
        detail: e.to_string(),
    })?;
    Ok(routes
        .into_iter()
        .filter_map(|r| Some((r.dst.trim_end_matches("/32").parse().ok()?, r.dev?)))
        .collect())
}

/// Makes the host route exactly `held` (floating IP → its network's VNI) and answer ARP on
/// `uplink` for those of them in `claimed` only; `before` are the addresses claimed until
/// now, whose answers go when they are not claimed any more, also when their route went
/// already (with its router, after the network's last port left).
pub async fn reconcile(
    shell: &Shell,
    uplink: Option<&str>,
    held: &BTreeMap<Ipv4Addr, u32>,
    claimed: &BTreeSet<Ipv4Addr>,
    before: &BTreeSet<Ipv4Addr>,
) -> Result<(), NetError> {
    if let Some(uplink) = uplink {
        for addr in before.difference(claimed) {
            unclaim(shell, uplink, *addr).await?;
        }
    }
    let now = routed(shell).await?;
    for (addr, dev) in &now {
        let wanted = held.get(addr).map(|vni| format!("{UPLINK_PREFIX}{vni}"));
        if wanted.as_deref() == Some(dev.as_str()) {
            continue;
        }
        let dst = format!("{addr}/32");
        shell
            .ip(&["route", "del", &dst, "proto", ROUTE_PROTO])
            .run()
            .await?;
        if let Some(uplink) = uplink {
            // Absent already is fine (a host restarted meanwhile).
            unclaim(shell, uplink, *addr).await?;
        }
    }
    for (addr, vni) in held {
        let dst = format!("{addr}/32");
        let via = transit_address(*vni)?.to_string();
        let dev = format!("{UPLINK_PREFIX}{vni}");
        shell
            .ip(&[
                "route",
                "replace",
                &dst,
                "via",
                &via,
                "dev",
                &dev,
                "proto",
                ROUTE_PROTO,
            ])
            .run()
            .await?;
        if let Some(uplink) = uplink {
            let how = if claimed.contains(addr) {
                "replace"
            } else {
                "del"
            };
            let cmd = shell.ip(&["neigh", how, "proxy", &addr.to_string(), "dev", uplink]);
            if claimed.contains(addr) {
                cmd.run().await?;
            } else {
                // Not claimed (yet): no answer here; absent already is fine.
                let _ = cmd.output().await?;
            }
        }
    }
    Ok(())
}

/// The floating IPs of `held` this host claims on its uplink: those whose instance's port is
/// `settled` here (plugged, and not a migration's VM that has not resumed here yet).
pub fn claimed(
    held: &BTreeMap<Ipv4Addr, (u32, Ipv4Addr)>,
    settled: impl Fn(u32, Ipv4Addr) -> bool,
) -> BTreeSet<Ipv4Addr> {
    held.iter()
        .filter(|(_, (vni, private))| settled(*vni, *private))
        .map(|(floating, _)| *floating)
        .collect()
}

/// Prepares `uplink` to answer ARP for floating IPs at once (no random proxy delay).
pub async fn prepare_uplink(shell: &Shell, uplink: &str) -> Result<(), NetError> {
    let key = format!("net.ipv4.neigh.{uplink}.proxy_delay=0");
    shell.sysctl(&["-qw", &key]).run().await?;
    Ok(())
}

/// A gratuitous ARP (a request for `addr` from `addr`) from `mac`: whoever caches `addr`
/// learns `mac` for it.
pub fn gratuitous_arp(mac: [u8; 6], addr: Ipv4Addr) -> Vec<u8> {
    arp_announcement(mac, mac, addr)
}

/// An ARP announcement sent from `sender` (the frame's source) saying that `addr` is at
/// `owner`: a host hands an address over to another one.
fn arp_announcement(sender: [u8; 6], owner: [u8; 6], addr: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&sender);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f.extend_from_slice(&owner);
    f.extend_from_slice(&addr.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&addr.octets());
    f
}

/// Announces `addrs` on `uplink` (in `netns`, if given) with gratuitous ARP. Best effort:
/// without it the uplink network learns the new host when its ARP entry expires.
pub async fn announce(netns: Option<String>, uplink: String, addrs: Vec<Ipv4Addr>) {
    send_announcements(netns, uplink, None, addrs).await
}

/// Announces on `uplink` that `addrs` are at `owner` (another host's uplink MAC) now. Best
/// effort, as [`announce`].
pub async fn hand_over(
    netns: Option<String>,
    uplink: String,
    owner: [u8; 6],
    addrs: Vec<Ipv4Addr>,
) {
    send_announcements(netns, uplink, Some(owner), addrs).await
}

async fn send_announcements(
    netns: Option<String>,
    uplink: String,
    owner: Option<[u8; 6]>,
    addrs: Vec<Ipv4Addr>,
) {
    if addrs.is_empty() {
        return;
    }
    // A thread of its own: sending may enter another namespace, which must not stick to a
    // thread of tokio's pool.
    let done = tokio::task::spawn_blocking(move || {
        std::thread::spawn(move || {
            super::dhcp::send_frames(netns.as_deref(), &uplink, |mac| {
                let owner = owner.unwrap_or(mac);
                addrs
                    .iter()
                    .map(|a| arp_announcement(mac, owner, *a))
                    .collect()
            })
        })
        .join()
    })
    .await;
    match done {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "floating IPs not announced"),
        _ => tracing::warn!("floating IPs not announced: the sending thread failed"),
    }
}

#[derive(Deserialize)]
struct Neighbour {
    #[serde(default)]
    lladdr: Option<String>,
}

/// The MAC address `addr` has on `uplink` in this host's neighbour table, if it is known
/// there (a host this one talked to lately).
pub async fn neighbour_mac(
    shell: &Shell,
    uplink: &str,
    addr: IpAddr,
) -> Result<Option<[u8; 6]>, NetError> {
    let target = addr.to_string();
    let cmd = shell.ip(&["-j", "neigh", "show", &target, "dev", uplink]);
    let out = cmd.run().await?;
    let found: Vec<Neighbour> = serde_json::from_str(&out).map_err(|e| NetError::Output {
        command: cmd.to_string(),
        detail: e.to_string(),
    })?;
    Ok(found.iter().find_map(|n| parse_mac(n.lladdr.as_deref()?)))
}

fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).ok())
        .collect::<Option<_>>()?;
    bytes.try_into().ok()
}

/// Stops answering ARP for `addr` on `uplink` (absent already is fine); its route stays.
pub async fn unclaim(shell: &Shell, uplink: &str, addr: Ipv4Addr) -> Result<(), NetError> {
    let _ = shell
        .ip(&["neigh", "del", "proxy", &addr.to_string(), "dev", uplink])
        .output()
        .await?;
    Ok(())
}

/// The floating IPs of `nats` whose network has a router here, by address.
pub fn held(
    nats: &[nimbus_agent_api::FloatingNat],
    routers: &BTreeSet<u32>,
) -> BTreeMap<Ipv4Addr, (u32, Ipv4Addr)> {
    nats.iter()
        .filter(|n| routers.contains(&n.vni))
        .filter_map(|n| Some((n.floating.parse().ok()?, (n.vni, n.private.parse().ok()?))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hand_over_names_the_new_owner_and_a_mac_parses() {
        let (me, owner) = ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        let f = arp_announcement(me, owner, Ipv4Addr::new(10, 249, 7, 193));
        assert_eq!(&f[6..12], &me, "sent by this host");
        assert_eq!(&f[22..28], &owner, "the address is at the other host");
        assert_eq!(parse_mac("02:00:00:00:00:02"), Some(owner));
        assert_eq!(parse_mac("02:00:00:00:00"), None);
        assert_eq!(parse_mac("zz:00:00:00:00:02"), None);
    }

    #[test]
    fn a_gratuitous_arp_claims_the_address() {
        let f = gratuitous_arp([2, 0, 0, 0, 0, 1], Ipv4Addr::new(10, 249, 7, 193));
        assert_eq!(f.len(), 42);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[28..32], &[10, 249, 7, 193], "sender address");
        assert_eq!(&f[38..42], &[10, 249, 7, 193], "target address");
    }

    #[test]
    fn a_floating_ip_is_claimed_only_once_its_port_is_settled_here() {
        let (f1, f2) = (
            Ipv4Addr::new(10, 249, 7, 193),
            Ipv4Addr::new(10, 249, 7, 194),
        );
        let (here, arriving) = (Ipv4Addr::new(10, 10, 0, 11), Ipv4Addr::new(10, 10, 0, 12));
        let held = BTreeMap::from([(f1, (4201, here)), (f2, (4201, arriving))]);
        let settled = |vni, ip| vni == 4201 && ip == here;
        assert_eq!(claimed(&held, settled), BTreeSet::from([f1]));
        assert!(
            claimed(&held, |_, _| false).is_empty(),
            "a migration's target before the VM resumes there claims nothing"
        );
    }

    #[test]
    fn only_floating_ips_of_networks_with_a_router_here_are_held() {
        let nat = |vni, f: &str| nimbus_agent_api::FloatingNat {
            vni,
            floating: f.into(),
            private: "10.10.0.11".into(),
        };
        let nats = [
            nat(4201, "10.249.7.193"),
            nat(4202, "10.249.7.194"),
            nat(4201, "bad"),
        ];
        let held = held(&nats, &[4201].into());
        assert_eq!(held.len(), 1);
        assert_eq!(held[&Ipv4Addr::new(10, 249, 7, 193)].0, 4201);
    }
}
