//! The server thread of one network's router: a UDP socket on the gateway address, inside the
//! router's namespace, bound to its network-side device.

use super::{answer, Zones, PORT};
use crate::network::command::{enter_netns, nothing_yet};
use crate::network::error::NetError;
use crate::network::worker::{self, Worker, POLL};
use std::net::{Ipv4Addr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};

/// Larger queries are not ours to answer (classic DNS over UDP: 512; EDNS clients ask small).
const MAX_QUERY: usize = 1232;

/// A running server; dropping it stops the thread (within [`POLL`]) and closes its socket.
#[derive(Debug)]
pub struct Server {
    _worker: Worker,
}

impl Server {
    /// Starts answering network `vni`'s names from `zones` on `address` port 53 of `device`
    /// in namespace `netns` (the router's); fails if the socket cannot be made.
    pub fn start(
        netns: &str,
        device: &str,
        address: Ipv4Addr,
        vni: u32,
        zones: Zones,
    ) -> Result<Self, NetError> {
        let (ns, dev) = (netns.to_string(), device.to_string());
        worker::spawn(
            format!("dns-{vni}"),
            move || open(&ns, &dev, address),
            move |sock, stop| serve(&sock, vni, &zones, stop),
        )
        .map(|w| Self { _worker: w })
        .map_err(|detail| NetError::Dns {
            netns: netns.to_string(),
            detail,
        })
    }
}

/// Enters `netns` (this thread only) and binds `address`:53 on `device` only, so nothing
/// arriving by another device of the router (its uplink) ever reaches the server.
fn open(netns: &str, device: &str, address: Ipv4Addr) -> Result<UdpSocket, String> {
    enter_netns(netns)?;
    let sock =
        UdpSocket::bind((address, PORT)).map_err(|e| format!("bind {address}:{PORT}: {e}"))?;
    nix::sys::socket::setsockopt(
        &sock,
        nix::sys::socket::sockopt::BindToDevice,
        &std::ffi::OsString::from(device),
    )
    .map_err(|e| format!("bind to device {device}: {e}"))?;
    sock.set_read_timeout(Some(POLL))
        .map_err(|e| e.to_string())?;
    Ok(sock)
}

fn serve(sock: &UdpSocket, vni: u32, zones: &Zones, stop: &AtomicBool) {
    let mut buf = [0u8; MAX_QUERY];
    while !stop.load(Ordering::Relaxed) {
        let (len, peer) = match sock.recv_from(&mut buf) {
            Ok(got) => got,
            Err(e) if nothing_yet(e.kind()) => continue,
            Err(e) => {
                tracing::warn!(vni, error = %e, "DNS server cannot read; stopping");
                return;
            }
        };
        let Some(reply) = zones.with(vni, |zone| answer(&buf[..len], zone)) else {
            continue;
        };
        if let Err(e) = sock.send_to(&reply, peer) {
            tracing::debug!(vni, %peer, error = %e, "DNS answer not sent");
        }
    }
}
