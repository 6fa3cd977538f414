//! Addresses on the cloud network. An instance's IP and MAC are chosen once, at creation,
//! and move with it between hosts.

use crate::config::NetworkSettings;
use std::collections::HashSet;
use std::net::Ipv4Addr;

/// Host addresses below this are left for routers and services of the network.
const FIRST_HOST: u32 = 10;

/// The lowest free address of the network (as `a.b.c.d/len`) and the MAC derived from it.
pub fn pick_address(net: &NetworkSettings, used: &HashSet<String>) -> Option<(String, String)> {
    let base = u32::from(net.address);
    let size = 1u32.checked_shl(32 - net.prefix_len as u32).unwrap_or(0);
    (FIRST_HOST..size.saturating_sub(1))
        .map(|i| Ipv4Addr::from(base + i))
        .map(|ip| format!("{ip}/{}", net.prefix_len))
        .find(|cidr| !used.contains(cidr))
        .and_then(|cidr| {
            let ip: Ipv4Addr = cidr.split('/').next()?.parse().ok()?;
            Some((cidr, mac_for(ip)))
        })
}

/// A locally administered MAC (52:54:00 is QEMU's prefix) unique per IP of the network.
pub fn mac_for(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("52:54:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_lowest_free_address() {
        let net = NetworkSettings::default();
        let mut used = HashSet::new();
        let (ip, mac) = pick_address(&net, &used).expect("free");
        assert_eq!(
            (ip.as_str(), mac.as_str()),
            ("10.200.0.10/16", "52:54:0a:c8:00:0a")
        );
        used.insert(ip);
        assert_eq!(pick_address(&net, &used).expect("free").0, "10.200.0.11/16");
    }

    #[test]
    fn a_full_network_has_no_address() {
        let net = NetworkSettings {
            address: Ipv4Addr::new(10, 9, 9, 0),
            prefix_len: 28,
            vni: 1,
        };
        let used: HashSet<String> = (10..15).map(|i| format!("10.9.9.{i}/28")).collect();
        assert_eq!(pick_address(&net, &used), None);
    }
}
