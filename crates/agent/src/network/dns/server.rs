//! The server thread of one network's router: a UDP socket on the gateway address, inside the
//! router's namespace, bound to its network-side device.

use super::{answer, Zones, PORT};
use crate::network::command::{enter_netns, nothing_yet};
use crate::network::error::NetError;
use std::net::{Ipv4Addr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

/// How often the thread looks at its stop flag.
const POLL: Duration = Duration::from_millis(500);
/// Larger queries are not ours to answer (classic DNS over UDP: 512; EDNS clients ask small).
const MAX_QUERY: usize = 1232;

/// A running server; dropping it stops the thread (within [`POLL`]) and closes its socket.
#[derive(Debug)]
pub struct Server {
    stop: Arc<AtomicBool>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
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
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let (ns, dev, flag) = (netns.to_string(), device.to_string(), stop.clone());
        let err = |detail: String| NetError::Dns {
            netns: netns.to_string(),
            detail,
        };
        std::thread::Builder::new()
            .name(format!("dns-{vni}"))
            .spawn(move || match open(&ns, &dev, address) {
                Ok(sock) => {
                    let _ = ready_tx.send(Ok(()));
                    serve(&sock, vni, &zones, &flag);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            })
            .map_err(|e| err(e.to_string()))?;
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .map_err(|e| err(e.to_string()))?
            .map_err(err)?;
        Ok(Self { stop })
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
