//! The server threads of one network's router: a UDP socket and a TCP listener on the
//! gateway address, inside the router's namespace, bound to its network-side device. Both
//! share one rate limit per source ([`RateLimit`]).

use super::limit::RateLimit;
use super::tcp;
use super::{answer, Zones, PORT};
use crate::network::command::{enter_netns, nothing_yet};
use crate::network::error::NetError;
use crate::network::worker::{self, Worker, POLL};
use std::net::{Ipv4Addr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Larger queries are not ours to answer (classic DNS over UDP: 512; EDNS clients ask small):
/// over UDP a longer datagram is cut and so not understood; over TCP it closes the connection.
pub const MAX_QUERY: usize = 1232;

/// A running server; dropping it stops the threads (within [`POLL`]) and closes its sockets.
#[derive(Debug)]
pub struct Server {
    _udp: Worker,
    _tcp: Worker,
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
        let shared = tcp::Shared {
            vni,
            zones,
            limit: Arc::new(Mutex::new(RateLimit::default())),
            open: Arc::new(AtomicUsize::new(0)),
        };
        let failed = |detail| NetError::Dns {
            netns: netns.to_string(),
            detail,
        };
        let (ns, dev, udp_shared) = (netns.to_string(), device.to_string(), shared.clone());
        let udp = worker::spawn(
            format!("dns-{vni}"),
            move || open(&ns, &dev, address),
            move |sock, stop| serve(&sock, &udp_shared, stop),
        )
        .map_err(failed)?;
        let (ns, dev) = (netns.to_string(), device.to_string());
        let tcp = worker::spawn(
            format!("dns-tcp-{vni}"),
            move || tcp::listen(&ns, &dev, address, POLL),
            move |listener, stop| tcp::accept_loop(&listener, &shared, stop),
        )
        .map_err(failed)?;
        Ok(Self {
            _udp: udp,
            _tcp: tcp,
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

fn serve(sock: &UdpSocket, shared: &tcp::Shared, stop: &AtomicBool) {
    let vni = shared.vni;
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
        let allowed = match shared.limit.lock() {
            Ok(mut limit) => limit.allow(peer.ip(), Instant::now()),
            Err(_) => false,
        };
        if !allowed {
            continue;
        }
        let Some(reply) = shared.zones.with(vni, |zone| answer(&buf[..len], zone)) else {
            continue;
        };
        if let Err(e) = sock.send_to(&reply, peer) {
            tracing::debug!(vni, %peer, error = %e, "DNS answer not sent");
        }
    }
}
