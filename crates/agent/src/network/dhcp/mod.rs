//! DHCP answered on the VM's own host, from the lease the controller decided (the NIC's IP,
//! its network's prefix and gateway, in the VM spec): the same answer on every host, so a VM
//! keeps its address across reboots and migrations and no host keeps lease state.
//!
//! One responder per tenant network present on the host: a thread with a packet socket on
//! the network's bridge `nb<vni>` (made with the segment, stopped with it). It answers only
//! requests whose sender MAC is a port of that network on this host and asks for that MAC
//! (requests flooded from other hosts, and a guest asking for another VM's lease, get
//! nothing). Answers are broadcast from the gateway address, as a relay-less server may.

mod reply;
mod responder;

pub use reply::{answer, frame, parse_request, Lease, LEASE_SECS};
pub use responder::{send_frames, Responder};

use nimbus_agent_api::NicSpec;
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

/// A port's key: its network's VNI and its MAC.
type PortKey = (u32, [u8; 6]);

/// The leases of this host's ports.
#[derive(Debug, Clone, Default)]
pub struct Leases(Arc<Mutex<HashMap<PortKey, Lease>>>);

impl Leases {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<PortKey, Lease>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds the lease of `nic` (on network `vni`); NICs whose address is not IPv4 have none.
    pub fn insert(&self, vni: u32, nic: &NicSpec) {
        if let Some(lease) = lease_of(nic) {
            self.map().insert((vni, lease.mac), lease);
        }
    }

    /// Removes the lease of `nic`.
    pub fn remove(&self, vni: u32, nic: &NicSpec) {
        if let Some(mac) = parse_mac(&nic.mac) {
            self.map().remove(&(vni, mac));
        }
    }

    /// Whether a port here on network `vni` has address `ip`.
    pub fn holds(&self, vni: u32, ip: Ipv4Addr) -> bool {
        self.map()
            .iter()
            .any(|((v, _), lease)| *v == vni && lease.ip == ip)
    }

    /// The lease of `mac` on network `vni`.
    pub fn get(&self, vni: u32, mac: [u8; 6]) -> Option<Lease> {
        self.map().get(&(vni, mac)).copied()
    }
}

/// The lease a NIC spec decides.
pub fn lease_of(nic: &NicSpec) -> Option<Lease> {
    let (ip, prefix) = nic.ip.split_once('/')?;
    Some(Lease {
        mac: parse_mac(&nic.mac)?,
        ip: ip.parse().ok()?,
        prefix: prefix.parse().ok().filter(|p: &u8| *p <= 32)?,
        gateway: nic
            .gateway
            .as_deref()
            .and_then(|g| g.parse::<Ipv4Addr>().ok()),
    })
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let bytes: Vec<u8> = s
        .split(':')
        .map(|o| u8::from_str_radix(o, 16).ok())
        .collect::<Option<_>>()?;
    bytes.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_come_from_the_spec() {
        let nic = NicSpec {
            mac: "52:54:0a:28:00:0a".into(),
            ip: "10.40.0.10/24".into(),
            gateway: Some("10.40.0.1".into()),
            vni: Some(4300),
        };
        let leases = Leases::default();
        leases.insert(4300, &nic);
        let mac = [0x52, 0x54, 10, 40, 0, 10];
        let lease = leases.get(4300, mac).expect("lease");
        assert_eq!((lease.ip, lease.prefix), (Ipv4Addr::new(10, 40, 0, 10), 24));
        assert!(leases.get(4301, mac).is_none(), "per network");
        assert!(leases.holds(4300, lease.ip) && !leases.holds(4301, lease.ip));
        leases.remove(4300, &nic);
        assert!(leases.get(4300, mac).is_none());
        assert!(lease_of(&NicSpec {
            ip: "10.0.0.1".into(),
            ..nic
        })
        .is_none());
    }
}
