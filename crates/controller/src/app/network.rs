//! Addresses of tenant networks (IPAM) and the checks of their CIDRs. The controller owns
//! IPAM: an instance's IP and MAC on each of its networks are chosen once, at creation,
//! claimed in the database (unique per network), and move with it between hosts.

use ipnet::Ipv4Net;
use std::collections::HashSet;
use std::net::Ipv4Addr;

/// Host addresses below this are left for the gateway and services of the network.
const FIRST_HOST: u32 = 10;
/// The shortest and the longest prefix a network may have: /8 at most (the largest private
/// block), /28 at least (14 hosts, of which the first ten are reserved).
pub const PREFIX_RANGE: std::ops::RangeInclusive<u8> = 8..=28;

/// Why a CIDR cannot be a network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("{0:?} is not an IPv4 prefix like 10.10.0.0/24")]
    Syntax(String),
    #[error("{0} is not the network address of its prefix (did you mean {1}?)")]
    NotNetwork(String, Ipv4Net),
    #[error("{0} is not private: use 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16")]
    NotPrivate(Ipv4Net),
    #[error("{0}: the prefix length must be between /8 and /28")]
    Size(Ipv4Net),
}

/// Parses and checks a tenant network's CIDR: private (RFC 1918), /8 to /28, written as its
/// network address.
pub fn parse_cidr(s: &str) -> Result<Ipv4Net, CidrError> {
    let net: Ipv4Net = s.parse().map_err(|_| CidrError::Syntax(s.to_string()))?;
    if net.network() != net.addr() {
        return Err(CidrError::NotNetwork(s.to_string(), net.trunc()));
    }
    if !PREFIX_RANGE.contains(&net.prefix_len()) {
        return Err(CidrError::Size(net));
    }
    let private = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]
        .iter()
        .filter_map(|p| p.parse::<Ipv4Net>().ok())
        .any(|p| p.contains(&net));
    if !private {
        return Err(CidrError::NotPrivate(net));
    }
    Ok(net)
}

/// Whether two prefixes share an address.
pub fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The gateway of a network: its first host address.
pub fn gateway_of(net: &Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()) + 1)
}

/// Checks that `ip` is an address instances may take in `net` (inside it, not its network,
/// gateway, reserved or broadcast address) and answers it as `ip/prefix` with its MAC.
pub fn fixed_address(net: &Ipv4Net, ip: &str) -> Result<(String, String), String> {
    let addr: Ipv4Addr = ip
        .parse()
        .map_err(|_| format!("{ip:?} is not an IPv4 address"))?;
    if !net.contains(&addr) {
        return Err(format!("{addr} is outside the network's {net}"));
    }
    let offset = u32::from(addr) - u32::from(net.network());
    if offset < FIRST_HOST || addr == net.broadcast() {
        return Err(format!(
            "{addr} is reserved in {net} (the first {FIRST_HOST} addresses and the broadcast \
             address are the network's own)"
        ));
    }
    Ok((format!("{addr}/{}", net.prefix_len()), mac_for(addr)))
}

/// The lowest free address of network `cidr` (as `a.b.c.d/len`) and the MAC derived from it.
pub fn pick_address(cidr: &str, used: &HashSet<String>) -> Option<(String, String)> {
    let net: Ipv4Net = cidr.parse().ok()?;
    let base = u32::from(net.network());
    let size = 1u32
        .checked_shl(32 - u32::from(net.prefix_len()))
        .unwrap_or(0);
    (FIRST_HOST..size.saturating_sub(1))
        .map(|i| Ipv4Addr::from(base + i))
        .find(|ip| !used.contains(&format!("{ip}/{}", net.prefix_len())))
        .map(|ip| (format!("{ip}/{}", net.prefix_len()), mac_for(ip)))
}

/// A locally administered MAC (52:54:00 is QEMU's prefix) unique per IP of a network.
pub fn mac_for(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("52:54:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_lowest_free_address() {
        let mut used = HashSet::new();
        let (ip, mac) = pick_address("10.200.0.0/16", &used).expect("free");
        assert_eq!(
            (ip.as_str(), mac.as_str()),
            ("10.200.0.10/16", "52:54:0a:c8:00:0a")
        );
        used.insert(ip);
        assert_eq!(
            pick_address("10.200.0.0/16", &used).expect("free").0,
            "10.200.0.11/16"
        );
    }

    #[test]
    fn a_full_network_has_no_address() {
        let used: HashSet<String> = (10..15).map(|i| format!("10.9.9.{i}/28")).collect();
        assert_eq!(pick_address("10.9.9.0/28", &used), None);
    }

    #[test]
    fn cidrs_must_be_private_sized_and_aligned() {
        assert!(parse_cidr("10.10.0.0/24").is_ok());
        assert!(parse_cidr("192.168.5.0/28").is_ok());
        assert!(parse_cidr("172.20.0.0/16").is_ok());
        assert!(matches!(
            parse_cidr("8.8.8.0/24"),
            Err(CidrError::NotPrivate(_))
        ));
        assert!(matches!(
            parse_cidr("172.32.0.0/16"),
            Err(CidrError::NotPrivate(_))
        ));
        assert!(matches!(parse_cidr("10.0.0.0/29"), Err(CidrError::Size(_))));
        assert!(matches!(
            parse_cidr("10.0.0.0/7"),
            Err(CidrError::Syntax(_)
                | CidrError::NotNetwork(..)
                | CidrError::Size(_)
                | CidrError::NotPrivate(_))
        ));
        assert!(matches!(
            parse_cidr("10.10.0.5/24"),
            Err(CidrError::NotNetwork(..))
        ));
        assert!(matches!(parse_cidr("10.10.0.0"), Err(CidrError::Syntax(_))));
        assert!(matches!(parse_cidr("fd00::/64"), Err(CidrError::Syntax(_))));
    }

    #[test]
    fn overlap_and_fixed_addresses() {
        let a = parse_cidr("10.10.0.0/24").expect("a");
        let b = parse_cidr("10.10.0.128/25").expect("b");
        let c = parse_cidr("10.10.1.0/24").expect("c");
        assert!(overlaps(&a, &b) && overlaps(&b, &a));
        assert!(!overlaps(&a, &c));
        assert_eq!(gateway_of(&a), Ipv4Addr::new(10, 10, 0, 1));
        assert_eq!(
            fixed_address(&a, "10.10.0.20").expect("ok"),
            ("10.10.0.20/24".to_string(), "52:54:0a:0a:00:14".to_string())
        );
        for bad in ["10.10.1.20", "10.10.0.1", "10.10.0.255", "x"] {
            assert!(fixed_address(&a, bad).is_err(), "{bad}");
        }
    }
}
