//! A tenant network's gateway on this host: a router of its own (a network namespace) plugged
//! into the network's bridge, with the gateway address and MAC, that forwards the guests'
//! traffic to the host's uplink only, masqueraded. Distributed, as Neutron's DVR: every host
//! with a port of the network has the same gateway (same address, same MAC), so a guest always
//! uses its own host's, also after a live migration; and each router has its own routing
//! table, so two projects' overlapping CIDRs never meet.
//!
//! ```text
//!  host namespace                                router namespace <host>-r<vni>
//!  ┌─────────────────────────────────┐           ┌────────────────────────────────────┐
//!  │ bridge nb<vni> ── ng<vni> ══════╪═══ veth ══╪═ gw0  <gateway>/<prefix>, GATEWAY_MAC│
//!  │                                 │           │   forward gw0 -> up0 only; replies │
//!  │ nu<vni> 169.254.0.1/32 ═════════╪═══ veth ══╪═ up0  100.64.0.0/10 + vni (transit) │
//!  │   route <transit>/32 dev nu<vni>│           │   default via 169.254.0.1          │
//!  │ egress (see [`super::egress`]): │           │   masquerade out of up0            │
//!  │   nu* -> nu* dropped, nu* -> the│           │   input: ICMP echo and replies only│
//!  │   host itself dropped, transit  │           └────────────────────────────────────┘
//!  │   masqueraded to the uplink     │
//!  └─────────────────────────────────┘
//! ```
//! The path out: guest → tap → bridge → gw0 (the router) → up0 → nu<vni> in the host →
//! the host's own route to the destination, source rewritten twice (guest → transit address in
//! the router, transit → the host's uplink address in the host). Transit addresses are unique
//! per network on a host (the VNI in 100.64.0.0/10), so replies find their router.
//! Floating IPs ([`super::floating`]) are translated here too: destination NAT to the guest on
//! the way in (and forwarded from the uplink to the network for those connections only),
//! source NAT to the floating IP on the way out, before the masquerade.
//!
//! The router's namespace is a named one (`ip netns`), made in the mount namespace
//! [`Shell::with_netns_mounts`] names when the agent has a private one (`nimbus up`).
//!
//! Everything is checked before it is changed, so [`ensure`] is idempotent and an agent
//! restart changes nothing that runs. The router goes with the network's segment
//! ([`remove`]).

use super::command::{no_such_device, Shell};
use super::error::NetError;
use super::link;
use super::port_security::nft_table_exists;
use super::segment::Segment;
use std::net::Ipv4Addr;

mod rules;
pub use rules::{filter, Nat};

/// The gateway's MAC on every network and every host (locally administered, unicast): one
/// network is one L2 domain, so several networks may share it, and every host answering with
/// the same one lets a migrated guest keep its ARP entry.
pub const GATEWAY_MAC: &str = "02:6e:62:67:77:01";
/// The host's address on every router uplink, the routers' next hop.
pub const HOST_TRANSIT: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 1);
/// Routers' uplink addresses: the VNI in this /10 (a shared-address-space block, never a
/// tenant's private CIDR).
pub const TRANSIT_BASE: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 0);
pub const TRANSIT_PREFIX: u8 = 10;
/// Host-side name prefixes: the router's port on the bridge, its uplink.
pub const GATEWAY_PORT_PREFIX: &str = "ng";
pub const UPLINK_PREFIX: &str = "nu";
/// Inside the router.
/// The router's port on its network (its DNS server listens there only).
pub const ROUTER_GATEWAY: &str = "gw0";
const ROUTER_UPLINK: &str = "up0";
const TABLE: &str = "nimbus_router";

/// One network's router on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Router {
    pub vni: u32,
    /// The router's namespace.
    pub netns: String,
    /// The gateway address and the network's prefix length.
    pub gateway: Ipv4Addr,
    pub prefix: u8,
}

impl Router {
    /// The router of network `vni` whose namespace name starts with `host` (the host's own
    /// namespace name, so hosts played by namespaces of one machine never share one).
    pub fn new(host: &str, vni: u32, gateway: Ipv4Addr, prefix: u8) -> Self {
        Self {
            vni,
            netns: netns_name(host, vni),
            gateway,
            prefix,
        }
    }

    pub fn gateway_port(&self) -> String {
        format!("{GATEWAY_PORT_PREFIX}{}", self.vni)
    }

    pub fn uplink(&self) -> String {
        format!("{UPLINK_PREFIX}{}", self.vni)
    }

    /// The router's address on its uplink.
    pub fn transit(&self) -> Result<Ipv4Addr, NetError> {
        transit_address(self.vni)
    }
}

/// The name of network `vni`'s router namespace on host `host`.
pub fn netns_name(host: &str, vni: u32) -> String {
    format!("{host}-r{vni}")
}

/// The uplink address of network `vni`'s routers.
pub fn transit_address(vni: u32) -> Result<Ipv4Addr, NetError> {
    let size = 1u32 << (32 - TRANSIT_PREFIX);
    if vni == 0 || vni >= size - 1 {
        return Err(NetError::Invalid {
            what: "network segment id for a gateway (1 to 2^22-2)",
            value: vni.to_string(),
        });
    }
    Ok(Ipv4Addr::from(u32::from(TRANSIT_BASE) + vni))
}

/// The name routers of this host start with: the host's network namespace name (`ip netns
/// identify`), or `nimbus` on a host that runs in the machine's own namespace.
pub async fn host_name(shell: &Shell) -> Result<String, NetError> {
    if let Some(ns) = shell.netns() {
        return Ok(ns.to_string());
    }
    let out = shell.ip(&["netns", "identify"]).run().await?;
    Ok(out
        .split_whitespace()
        .next()
        .unwrap_or("nimbus")
        .to_string())
}

/// Makes (or repairs) `router` on `seg`'s bridge, translating `nats` (`None`: not known yet,
/// after an agent restart: an existing router keeps its rules). Returns whether its namespace
/// was created.
pub async fn ensure(
    shell: &Shell,
    seg: &Segment,
    router: &Router,
    nats: Option<&[Nat]>,
) -> Result<bool, NetError> {
    let transit = router.transit()?;
    let created = ensure_netns(shell, &router.netns).await?;
    let inside = Shell::in_netns(&router.netns);
    let mtu = super::NIC_MTU;
    ensure_veth(shell, &router.gateway_port(), &router.netns, ROUTER_GATEWAY).await?;
    let current = link::show(shell, &router.gateway_port()).await?;
    link::ensure_port(
        shell,
        &router.gateway_port(),
        current.as_ref(),
        &seg.bridge,
        mtu,
    )
    .await?;
    ensure_veth(shell, &router.uplink(), &router.netns, ROUTER_UPLINK).await?;
    let host_transit = format!("{HOST_TRANSIT}/32");
    let uplink = router.uplink();
    shell
        .ip(&["addr", "replace", &host_transit, "dev", &uplink])
        .run()
        .await?;
    shell
        .ip(&["link", "set", "dev", &uplink, "up"])
        .run()
        .await?;
    let transit_host = format!("{transit}/32");
    shell
        .ip(&["route", "replace", &transit_host, "dev", &uplink])
        .run()
        .await?;
    let gateway = format!("{}/{}", router.gateway, router.prefix);
    let mtu_text = mtu.to_string();
    for args in [
        vec!["link", "set", "dev", "lo", "up"],
        vec!["link", "set", "dev", ROUTER_GATEWAY, "address", GATEWAY_MAC],
        vec!["link", "set", "dev", ROUTER_GATEWAY, "mtu", &mtu_text, "up"],
        vec!["addr", "replace", &gateway, "dev", ROUTER_GATEWAY],
        vec!["addr", "replace", &transit_host, "dev", ROUTER_UPLINK],
        vec!["link", "set", "dev", ROUTER_UPLINK, "up"],
        vec!["route", "replace", &host_transit, "dev", ROUTER_UPLINK],
    ] {
        inside.ip(&args).run().await?;
    }
    let via = HOST_TRANSIT.to_string();
    inside
        .ip(&[
            "route",
            "replace",
            "default",
            "via",
            &via,
            "dev",
            ROUTER_UPLINK,
        ])
        .run()
        .await?;
    for sysctl in [&inside, shell] {
        sysctl
            .sysctl(&["-qw", "net.ipv4.ip_forward=1"])
            .run()
            .await?;
    }
    match nats {
        Some(nats) => set_nats(&router.netns, nats).await?,
        // (A router without its rules would forward unfiltered.)
        None if !nft_table_exists(&inside, "ip", TABLE).await? => {
            set_nats(&router.netns, &[]).await?
        }
        None => {}
    }
    Ok(created)
}

/// Makes the router's rules exactly [`filter`] of `nats` (one transaction).
pub async fn set_nats(netns: &str, nats: &[Nat]) -> Result<(), NetError> {
    super::port_security::apply(&Shell::in_netns(netns), filter(nats)).await
}

/// Creates the named namespace unless it exists. Returns whether it was created.
async fn ensure_netns(shell: &Shell, name: &str) -> Result<bool, NetError> {
    let list = shell.ip(&["netns", "list"]).run().await?;
    if list
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name))
    {
        return Ok(false);
    }
    shell.netns_named(&["add", name]).run().await?;
    Ok(true)
}

/// A veth pair `host_end` (here) and `router_end` (in `netns`), unless `host_end` exists.
async fn ensure_veth(
    shell: &Shell,
    host_end: &str,
    netns: &str,
    router_end: &str,
) -> Result<(), NetError> {
    match link::show(shell, host_end).await? {
        Some(l) if l.kind.as_deref() == Some("veth") => Ok(()),
        Some(l) => Err(NetError::WrongKind {
            name: host_end.into(),
            found: l.kind.unwrap_or_else(|| "plain".into()),
            expected: "veth",
        }),
        None => {
            let args = [
                "link", "add", host_end, "type", "veth", "peer", "name", router_end, "netns", netns,
            ];
            shell.ip(&args).run().await?;
            Ok(())
        }
    }
}

/// Removes the router of network `vni` on host `host` (its namespace and both veths);
/// absent parts are fine.
pub async fn remove(shell: &Shell, host: &str, vni: u32) -> Result<(), NetError> {
    let router = Router::new(host, vni, Ipv4Addr::UNSPECIFIED, 0);
    for dev in [router.gateway_port(), router.uplink()] {
        let del = shell.ip(&["link", "del", &dev]);
        let out = del.output().await?;
        if !out.success && !no_such_device(&out.stderr) {
            return Err(del.failed(&out));
        }
    }
    let del = shell.netns_named(&["del", &router.netns]);
    let out = del.output().await?;
    if !out.success && !out.stderr.contains("No such file") {
        return Err(del.failed(&out));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_transit_addresses() {
        let r = Router::new("nt1-host1", 4201, Ipv4Addr::new(10, 10, 0, 1), 24);
        assert_eq!(r.netns, "nt1-host1-r4201");
        assert_eq!(
            (r.gateway_port(), r.uplink()),
            ("ng4201".into(), "nu4201".into())
        );
        assert_eq!(
            r.transit().expect("transit"),
            Ipv4Addr::new(100, 64, 16, 105)
        );
        assert!(transit_address(0).is_err());
        assert!(transit_address(1 << 22).is_err());
        assert!(
            Router::new("h", 16_777_215, r.gateway, 24)
                .gateway_port()
                .len()
                <= 15
        );
    }
}
