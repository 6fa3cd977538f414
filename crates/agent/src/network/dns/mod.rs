//! Instance names inside a network: a DNS server at the network's gateway address, in the
//! network's router on every host that has a port of it, answering from the names the
//! controller sends with the host's firewall ([`nimbus_agent_api::NetworkNames`]).
//!
//! ```text
//!  guest ── udp/53, tcp/53 ──▶ gw0 <gateway>   router <host>-r<vni>
//!                       │ sockets bound to <gateway>:53 and to gw0 only; the router's input
//!                       │ chain accepts udp/53 and tcp/53 from gw0 only (never from its uplink)
//!                       ▼
//!            web1                       A   10.10.0.20   (the instance's address here)
//!            web1.backend.internal      A   10.10.0.20
//!            20.0.10.10.in-addr.arpa    PTR web1.backend.internal
//!            web1 AAAA (instances have IPv4 only)        NOERROR, no data (not NXDOMAIN:
//!                                                          the name exists)
//!            a name of the domain that no instance has    NXDOMAIN
//!            any other name                               REFUSED (no recursion: never
//!                                                          an open resolver)
//! ```
//! The DHCP lease gives the gateway as DNS server and the domain (`<network>.internal`) as
//! the client's domain, so `ping web1` works in the guest with or without the search list.
//! Names are those of the instances with a port on the network, of its own project only (a
//! network belongs to one project), so nothing of another network or project is answered.
//!
//! A guest is hostile: queries longer than 1,232 bytes are not answered, each source address
//! gets 100 queries a second (bursts of 200) over UDP and TCP together, and TCP connections
//! are bounded in number, idle time, lifetime and queries (see `tcp`).

mod answer;
mod limit;
mod server;
mod tcp;

pub use answer::{answer, TTL_SECS};
pub use server::Server;

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::{Arc, RwLock};

/// The DNS port.
pub const PORT: u16 = 53;

/// One network's names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Zone {
    /// e.g. `backend.internal` (lowercase, no trailing dot).
    pub domain: String,
    /// Instance name → address.
    pub records: BTreeMap<String, Ipv4Addr>,
}

impl Zone {
    /// The zone of `names` (records that are not a DNS label and an IPv4 address are left
    /// out: the controller validates both, this is the agent's own check).
    pub fn of(names: &nimbus_agent_api::NetworkNames) -> Self {
        let records = names
            .records
            .iter()
            .filter(|r| nimbus_api::validate_name(&r.name).is_ok())
            .filter_map(|r| Some((r.name.clone(), r.address.parse().ok()?)))
            .collect();
        Self {
            domain: names.domain.trim_end_matches('.').to_ascii_lowercase(),
            records,
        }
    }
}

/// The zones of the networks on this host, by VNI, shared by their servers and the DHCP
/// responders (which hand out the domain).
#[derive(Debug, Clone, Default)]
pub struct Zones(Arc<RwLock<HashMap<u32, Zone>>>);

impl Zones {
    /// Replaces every zone with those of `names` (what the controller last sent).
    pub fn replace(&self, names: &[nimbus_agent_api::NetworkNames]) {
        let zones = names.iter().map(|n| (n.vni, Zone::of(n))).collect();
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = zones;
    }

    /// What `f` makes of network `vni`'s zone (`None`: the controller sent none).
    pub fn with<T>(&self, vni: u32, f: impl FnOnce(Option<&Zone>) -> T) -> T {
        f(self.0.read().unwrap_or_else(|p| p.into_inner()).get(&vni))
    }

    /// The DNS domain of network `vni`, if known.
    pub fn domain(&self, vni: u32) -> Option<String> {
        self.with(vni, |z| z.map(|z| z.domain.clone()))
    }
}
