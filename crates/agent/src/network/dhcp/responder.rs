//! The responder thread of one network's bridge.

use super::{answer, frame, parse_request, Leases};
use crate::network::dns::Zones;
use crate::network::error::NetError;
use crate::network::worker::{self, Worker, POLL};
use pnet_datalink::Channel;
use std::sync::atomic::{AtomicBool, Ordering};

/// A running responder; dropping it stops the thread (within [`POLL`]).
#[derive(Debug)]
pub struct Responder {
    _worker: Worker,
}

impl Responder {
    /// Starts answering on `bridge` (in network namespace `netns`, if given) for network
    /// `vni` from `leases` (and the network's DNS domain from `zones`); fails if the bridge
    /// cannot be opened.
    pub fn start(
        netns: Option<&str>,
        bridge: &str,
        vni: u32,
        leases: Leases,
        zones: Zones,
    ) -> Result<Self, NetError> {
        let (netns, name) = (netns.map(str::to_string), bridge.to_string());
        worker::spawn(
            format!("dhcp-{bridge}"),
            move || open(netns.as_deref(), &name),
            move |chan, stop| serve(chan, vni, &leases, &zones, stop),
        )
        .map(|w| Self { _worker: w })
        .map_err(|detail| NetError::Dhcp {
            bridge: bridge.to_string(),
            detail,
        })
    }
}

struct Open {
    mac: [u8; 6],
    tx: Box<dyn pnet_datalink::DataLinkSender>,
    rx: Box<dyn pnet_datalink::DataLinkReceiver>,
}

/// Enters `netns` (this thread only) and opens a packet socket on `bridge`.
fn open(netns: Option<&str>, bridge: &str) -> Result<Open, String> {
    if let Some(ns) = netns {
        crate::network::command::enter_netns(ns)?;
    }
    let iface = pnet_datalink::interfaces()
        .into_iter()
        .find(|i| i.name == bridge)
        .ok_or("no such device")?;
    let mac = iface
        .mac
        .map(|m| m.octets())
        .ok_or("the device has no MAC")?;
    let config = pnet_datalink::Config {
        read_timeout: Some(POLL),
        ..Default::default()
    };
    match pnet_datalink::channel(&iface, config) {
        Ok(Channel::Ethernet(tx, rx)) => Ok(Open { mac, tx, rx }),
        Ok(_) => Err("not an Ethernet device".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// Sends the frames `build` makes from the device's MAC out of `dev` (in `netns`, if given;
/// the calling thread enters it).
pub fn send_frames(
    netns: Option<&str>,
    dev: &str,
    build: impl FnOnce([u8; 6]) -> Vec<Vec<u8>>,
) -> Result<(), String> {
    let mut chan = open(netns, dev)?;
    for frame in build(chan.mac) {
        if let Some(Err(e)) = chan.tx.send_to(&frame, None) {
            return Err(e.to_string());
        }
    }
    Ok(())
}

fn serve(mut chan: Open, vni: u32, leases: &Leases, zones: &Zones, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let reply = match chan.rx.next() {
            Ok(f) => reply_to(f, vni, leases, zones, chan.mac),
            Err(e) if crate::network::command::nothing_yet(e.kind()) => continue,
            Err(e) => {
                tracing::warn!(vni, error = %e, "DHCP responder cannot read; stopping");
                return;
            }
        };
        if let Some(bytes) = reply {
            if let Some(Err(e)) = chan.tx.send_to(&bytes, None) {
                tracing::warn!(vni, error = %e, "DHCP answer not sent");
            }
        }
    }
}

/// The frame answering `f`, if it is a request of a port of this network on this host.
fn reply_to(
    f: &[u8],
    vni: u32,
    leases: &Leases,
    zones: &Zones,
    own_mac: [u8; 6],
) -> Option<Vec<u8>> {
    let (src, req) = parse_request(f)?;
    // The sender must ask for itself: no lease of another VM for a guest that forges chaddr.
    if req.chaddr().get(..6) != Some(&src[..]) {
        return None;
    }
    let lease = leases.get(vni, src)?;
    let msg = answer(&req, &lease, zones.domain(vni).as_deref())?;
    tracing::debug!(vni, ip = %lease.ip, "DHCP answer");
    frame(&msg, own_mac, lease.server())
}

#[cfg(test)]
mod tests {
    use super::*;
    use dhcproto::v4::{DhcpOption, Message, MessageType};
    use nimbus_agent_api::NicSpec;
    use std::net::Ipv4Addr;

    /// A DISCOVER frame from `src` asking for `chaddr`, to the server port.
    fn discover(src: [u8; 6], chaddr: [u8; 6]) -> Vec<u8> {
        let z = Ipv4Addr::UNSPECIFIED;
        let mut m = Message::new_with_id(1, z, z, z, z, &chaddr);
        m.opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Discover));
        let mut f = frame(&m, src, z).expect("frame");
        f[34..36].copy_from_slice(&68u16.to_be_bytes());
        f[36..38].copy_from_slice(&67u16.to_be_bytes());
        f
    }

    #[test]
    fn answers_only_a_port_asking_for_itself() {
        let leases = Leases::default();
        let nic = NicSpec {
            mac: "52:54:0a:28:00:0a".into(),
            ip: "10.40.0.10/24".into(),
            gateway: Some("10.40.0.1".into()),
            vni: Some(4300),
        };
        leases.insert(4300, &nic);
        let (vm, other) = ([0x52, 0x54, 10, 40, 0, 10], [0x52, 0x54, 10, 40, 0, 11]);
        let own = [2, 0, 0, 0, 0, 1];
        let zones = Zones::default();
        assert!(reply_to(&discover(vm, vm), 4300, &leases, &zones, own).is_some());
        assert!(
            reply_to(&discover(other, vm), 4300, &leases, &zones, own).is_none(),
            "forged chaddr"
        );
        assert!(
            reply_to(&discover(vm, vm), 4301, &leases, &zones, own).is_none(),
            "other network"
        );
        assert!(
            reply_to(&discover(other, other), 4300, &leases, &zones, own).is_none(),
            "not a port here"
        );
    }
}
