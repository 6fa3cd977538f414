//! The EC2-style metadata service at 169.254.169.254:80, one server per tenant network on
//! each host, inside that network's router ([`super::router`]):
//!
//! ```text
//!  guest ── tap ──(port security: own MAC + IP)── bridge nb<vni> ── gw0 ┐ router <host>-r<vni>
//!                                                                       │ lo 169.254.169.254/32
//!   agent: a socket bound there (made in the router's namespace) ◀──────┘ input: tcp 80 from gw0
//!          serves the EC2 API ([`http`]) for the instance whose port has the source address
//! ```
//! - Reached through the guest's default gateway (or ARP for 169.254.169.254, which the router
//!   answers); only from `gw0`, the network's side: nothing on the uplink reaches it.
//! - The socket lives in the router's namespace: the server has no route to the host, and the
//!   agent's API is not on it (a separate axum router with only these paths).
//! - Who asks: the router of network `vni` sees only frames of this host's ports of `vni`
//!   (gateway frames never cross the VXLAN), and port security lets a port send only with its
//!   own MAC and IPv4 address, before the bridge. So (vni, source address) names exactly one
//!   port here, the one the request came in by: a guest that forges another's address is
//!   dropped at its own tap. Tokens ([`token`]) are bound to that instance too.
//! - The data is the VM specs of this host's VMs (from the controller: id, name, NICs, keys,
//!   user-data) and the floating IPs the controller pushes; a migrated VM's target has its
//!   spec before QEMU starts there, and the source forgets it when the VM leaves.

pub mod http;
pub mod registry;
mod server;
pub mod token;

use super::command::Shell;
use super::error::NetError;
use registry::Registry;
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;
use token::Tokens;

/// The metadata address, as EC2's.
pub const ADDRESS: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
pub const PORT: u16 = 80;

/// The metadata servers of this host and what they answer from.
#[derive(Debug)]
pub struct Metadata {
    registry: Arc<Registry>,
    tokens: Tokens,
    /// Where named network namespaces live when not in the agent's mount namespace.
    netns_mounts: Option<String>,
    servers: HashMap<u32, Server>,
}

/// A running server; dropping it stops it (and closes its socket).
#[derive(Debug)]
struct Server(tokio::task::JoinHandle<()>);

impl Drop for Server {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Default for Metadata {
    fn default() -> Self {
        Self::new(None)
    }
}

impl Metadata {
    /// No server yet; named namespaces are found through `netns_mounts` too (see
    /// [`Shell::with_netns_mounts`]).
    pub fn new(netns_mounts: Option<String>) -> Self {
        Self {
            registry: Arc::default(),
            tokens: Tokens::random(),
            netns_mounts,
            servers: HashMap::new(),
        }
    }

    /// What the servers answer from.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// What the servers answer from, to share.
    pub fn shared_registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// Makes sure network `vni` has its server in router namespace `netns`.
    pub async fn serve(&mut self, vni: u32, netns: &str) -> Result<(), NetError> {
        if self.servers.get(&vni).is_some_and(|s| !s.0.is_finished()) {
            return Ok(());
        }
        let address = format!("{ADDRESS}/32");
        Shell::in_netns(netns)
            .ip(&["addr", "replace", &address, "dev", "lo"])
            .run()
            .await?;
        let socket = listen_in(netns, self.netns_mounts.as_deref()).await?;
        let listener = tokio::net::TcpListener::from_std(socket).map_err(|e| failed(netns, e))?;
        let service = http::Service {
            vni,
            registry: self.registry.clone(),
            tokens: self.tokens.clone(),
        };
        let task = tokio::spawn(server::run(listener, service));
        tracing::info!(vni, netns, "metadata service at {ADDRESS}:{PORT}");
        self.servers.insert(vni, Server(task));
        Ok(())
    }

    /// Stops network `vni`'s server (its router is going).
    pub fn stop(&mut self, vni: u32) {
        self.servers.remove(&vni);
    }
}

fn failed(netns: &str, e: impl std::fmt::Display) -> NetError {
    NetError::Metadata {
        netns: netns.to_string(),
        detail: e.to_string(),
    }
}

/// A listening socket at [`ADDRESS`]:[`PORT`] in named network namespace `netns`, made by a
/// thread that enters it (the socket stays there; the agent's other threads do not move).
async fn listen_in(
    netns: &str,
    netns_mounts: Option<&str>,
) -> Result<std::net::TcpListener, NetError> {
    let paths = netns_paths(netns, netns_mounts);
    let name = netns.to_string();
    let (tx, rx) = tokio::sync::oneshot::channel();
    // A thread of its own, which ends after: a pooled thread left in the router's namespace
    // would run later work there (a blocking DNS lookup, say).
    std::thread::Builder::new()
        .name(format!("imds-{netns}"))
        .spawn(move || {
            let _ = tx.send(open_socket(&paths, &name));
        })
        .map_err(|e| failed(netns, e))?;
    let socket = tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .map_err(|_| failed(netns, "timed out"))?
        .map_err(|e| failed(netns, e))?
        .map_err(|e| failed(netns, e))?;
    Ok(socket)
}

/// Enters the namespace of the first of `paths` that opens (this thread only) and listens.
fn open_socket(paths: &[String], name: &str) -> Result<std::net::TcpListener, String> {
    let file = paths
        .iter()
        .find_map(|p| std::fs::File::open(p).ok())
        .ok_or_else(|| format!("no namespace file among {paths:?}"))?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("enter {name}: {e}"))?;
    let socket = std::net::TcpListener::bind((ADDRESS, PORT)).map_err(|e| format!("bind: {e}"))?;
    // As EC2's default hop limit of 1: answers die at a router inside the guest (a container
    // host forwarding its containers' requests gets nothing for them).
    socket.set_ttl(1).map_err(|e| format!("ttl: {e}"))?;
    socket
        .set_nonblocking(true)
        .map_err(|e| format!("nonblocking: {e}"))?;
    Ok(socket)
}

/// Where the file of named namespace `netns` is: `/run/netns/<name>` as the agent sees it,
/// else as the mount namespace `netns_mounts` (`/proc/<pid>/ns/mnt`) sees it.
fn netns_paths(netns: &str, netns_mounts: Option<&str>) -> Vec<String> {
    let mut paths = vec![format!("/run/netns/{netns}")];
    if let Some(root) = netns_mounts.and_then(|m| m.strip_suffix("/ns/mnt")) {
        paths.push(format!("{root}/root/run/netns/{netns}"));
    }
    paths
}
