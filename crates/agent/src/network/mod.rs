//! Host networking: one layer-2 segment per tenant network that spans every host where the
//! network has a port, so a VM keeps its MAC and IP wherever it runs and reaches the VMs of
//! its networks, and only those. Each network has its own bridge `nb<vni>` and VXLAN device
//! `nx<vni>` ([`segment`]), made by [`HostNetwork::plug`] for the first port of the network
//! on the host and removed by [`HostNetwork::unplug`] after the last; the flood lists of all
//! of them are the peers of the last registration. The picture below is the former single
//! flat network (`nimbus0`, `nimbus-vx`, still made at registration for VMs defined before
//! tenant networks, whose NICs have no VNI); a tenant segment looks the same with its own
//! names and VNI.
//!
//! ```text
//!   host A (a machine, or a netns of `nimbus up`)      host B
//!  ┌──────────────────────────────────────────┐      ┌──────────────────────────────┐
//!  │  VM 1: eth0 10.200.0.10/16, mtu 1450     │      │  VM 2: eth0 10.200.0.11/16   │
//!  │    │ virtio-net, host_mtu=1450           │      │    │                         │
//!  │  tap nt<10 hex of id> ─┐                 │      │  tap nt<...> ─┐              │
//!  │                        ├─ bridge nimbus0 │      │               ├─ nimbus0     │
//!  │  nimbus-vx ────────────┘  (no address)   │      │  nimbus-vx ───┘              │
//!  │   vxlan id <vni>, local <A>, port 4789,  │      │   local <B>                  │
//!  │   learning; flood: 00:00:00:00:00:00 → B │      │   flood → A                  │
//!  │                                          │      │                              │
//!  │  underlay <A> (host of the advertise URL)│═UDP═▶│  underlay <B>                │
//!  └──────────────────────────────────────────┘ 4789 └──────────────────────────────┘
//! ```
//! - Registration ([`HostNetwork::apply`]): the controller's [`NetworkConfig`] (VNI, peers)
//!   makes the bridge, the VXLAN device and its flood list; run at every registration, it
//!   adds new peers and removes gone ones. An answer without a network changes nothing.
//! - Launch ([`HostNetwork::plug`]): every QEMU start goes through it, a migration target's
//!   too: the bridge (if registration has not made it yet) and one tap per NIC, then the
//!   NICs and `nimbus.ip=`/`nimbus.gw=` in the QEMU configuration ([`guest`]).
//! - Delete ([`HostNetwork::unplug`]) removes the taps; a stopped VM keeps them, and a
//!   restarted agent leaves everything as it is (running VMs keep their taps).
//! - MTU: the underlay has 1500 bytes and VXLAN costs 50, so the bridge, the VXLAN device,
//!   the taps and the guests use [`NIC_MTU`] (1450). The guest learns it from the virtio
//!   device (`host_mtu`) and needs no configuration for it.
//! - During a migration both hosts briefly have a tap for the VM; when the VM resumes on
//!   the target, QEMU announces its MAC (RARP) and the learning VXLAN devices of the
//!   other hosts point it at the new host.
//!
//! Host networking is off (VMs start without their NICs, with a warning) for an agent that
//! is not root, or that advertises a loopback address: such agents may share one namespace
//! (`nimbus up --no-netns`), where one VM's tap would serve two hosts during a migration.
//! An advertised name that does not resolve gives bridge and taps, but no VXLAN.
//! Everything runs `ip`/`bridge` (iproute2): plain, inspectable, and every step checks
//! before it changes, so all of it is idempotent.

mod arrival;
pub mod bridge;
pub mod command;
pub mod dhcp;
pub mod dns;
pub mod egress;
pub mod error;
pub mod floating;
pub mod guest;
pub mod link;
pub mod metadata;
pub mod port_security;
pub mod router;
pub mod secgroups;
pub mod segment;
pub mod tap;
pub mod underlay;
pub mod vxlan;
pub mod worker;

pub use command::Shell;
pub use error::NetError;
pub use guest::NIC_MTU;

use nimbus_agent_api::{HostFirewall, NetworkConfig, VmSpec};
use nimbus_qemu::QemuConfig;
use segment::Segment;
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use vxlan::{PeerChanges, VxlanParams};

/// The mount namespace (a path, `/proc/<pid>/ns/mnt`) where the agent makes the named network
/// namespaces of its gateways, when it is not its own (`nimbus up` sets it: its agents run
/// under `ip netns exec`, in a mount namespace of their own).
pub const NETNS_MOUNTS_ENV: &str = "NIMBUS_NETNS_MOUNT_NS";

/// The host's side of the cloud network.
#[derive(Debug)]
pub struct HostNetwork {
    shell: Shell,
    /// Why this agent cannot manage network devices, if it cannot.
    disabled: Option<String>,
    /// This host's underlay address (`None`: no VXLAN).
    underlay: Option<IpAddr>,
    /// The controller's API, which tenant gateways must not reach.
    controller: Option<SocketAddr>,
    /// Serializes every change (registration, launches and deletes run concurrently).
    state: tokio::sync::Mutex<State>,
    /// What the metadata servers answer from, and the guests' readiness reports (read by
    /// the VMs' actors without waiting for `state`).
    metadata: Arc<metadata::registry::Registry>,
}

#[derive(Debug, Default)]
struct State {
    /// Warnings already given, so a registration every 10 s does not repeat them.
    warned: BTreeSet<String>,
    /// The other hosts' underlay addresses, as of the last registration: the flood list of
    /// every VXLAN device made here.
    peers: BTreeSet<IpAddr>,
    /// The DHCP leases of this host's ports.
    leases: dhcp::Leases,
    /// A DHCP responder per tenant network present here, by VNI.
    responders: std::collections::HashMap<u32, dhcp::Responder>,
    /// The names of the networks here, as the controller last sent them.
    zones: dns::Zones,
    /// A DNS server per router here, by VNI.
    dns: std::collections::HashMap<u32, dns::Server>,
    /// The name this host's routers start with, once known ([`router::host_name`]).
    router_host: Option<String>,
    /// The gateway routers here: VNI → namespace.
    routers: std::collections::BTreeMap<u32, String>,
    /// The floating IPs of this host's instances, as the controller last sent them (`None`
    /// until it has, after a restart: what runs stays as it is until then).
    floating: Option<Vec<nimbus_agent_api::FloatingNat>>,
    /// The device of the underlay address, once known.
    uplink: Option<String>,
    /// The addresses (VNI, IP) of VMs migrating in that have not resumed here yet: their
    /// floating IPs are routed here but not claimed ([`floating::claimed`]).
    arriving: BTreeSet<(u32, Ipv4Addr)>,
    /// The addresses of VMs that migrated away but are not unplugged yet: their floating IPs
    /// run on the target now, so this host no longer claims them ([`arrival`]).
    departed: BTreeSet<(u32, Ipv4Addr)>,
    /// The floating IPs claimed at the last apply (a newly claimed one is announced).
    claimed: BTreeSet<Ipv4Addr>,
    /// The metadata servers (one per router) and what they answer.
    metadata: metadata::Metadata,
    /// The security-group rules this agent put into the kernel (what the next apply changes).
    firewall: secgroups::Installed,
}

/// What [`HostNetwork::apply`] changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    pub bridge_created: bool,
    pub vxlan_created: bool,
    pub peers: PeerChanges,
}

impl Applied {
    fn changed(&self) -> bool {
        self.bridge_created || self.vxlan_created || self.peers != PeerChanges::default()
    }
}

impl HostNetwork {
    /// Makes the host's security-group rules exactly `fw` (see [`secgroups`]); answers
    /// whether they are enforced (not on a host without networking, whose VMs have no NICs).
    pub async fn apply_firewall(&self, fw: &HostFirewall) -> Result<bool, NetError> {
        let mut state = self.state.lock().await;
        if self.disabled.is_some() {
            return Ok(false);
        }
        state.firewall.apply(&self.shell, fw).await?;
        state.zones.replace(&fw.names);
        state.metadata.registry().set_floating(&fw.floating);
        state.floating = Some(fw.floating.clone());
        self.apply_floating(&mut state).await?;
        Ok(true)
    }

    /// Makes the floating IPs of `state` that have their router here translated (each
    /// router's NATs, the host's routes, ARP answers and egress exceptions), and announces
    /// the ones this host just took.
    async fn apply_floating(&self, state: &mut State) -> Result<(), NetError> {
        let Some(nats) = &state.floating else {
            // Not told yet (a restarted agent): routers and routes stay as they are.
            return egress::ensure(&self.shell, &self.protected(state)).await;
        };
        let routers: BTreeSet<u32> = state.routers.keys().copied().collect();
        let held = floating::held(nats, &routers);
        for (vni, netns) in &state.routers {
            let nats = nats_of(state, *vni).unwrap_or_default();
            router::set_nats(netns, &nats).await?;
        }
        if state.uplink.is_none() {
            if let Some(underlay) = self.underlay {
                state.uplink = floating::uplink_device(&self.shell, underlay).await?;
                if let Some(uplink) = &state.uplink {
                    floating::prepare_uplink(&self.shell, uplink).await?;
                }
            }
        }
        egress::ensure(&self.shell, &self.protected(state)).await?;
        let by_vni = held.iter().map(|(f, (v, _))| (*f, *v)).collect();
        let claimed = floating::claimed(&held, |vni, ip| {
            state.leases.holds(vni, ip)
                && !state.arriving.contains(&(vni, ip))
                && !state.departed.contains(&(vni, ip))
        });
        floating::reconcile(&self.shell, state.uplink.as_deref(), &by_vni, &claimed).await?;
        let taken: Vec<Ipv4Addr> = claimed.difference(&state.claimed).copied().collect();
        state.claimed = claimed;
        if let Some(uplink) = &state.uplink {
            if !taken.is_empty() {
                tracing::info!(?taken, uplink, "floating IPs taken here");
            }
            let netns = self.shell.netns().map(str::to_string);
            floating::announce(netns, uplink.clone(), taken).await;
        }
        Ok(())
    }

    /// Devices managed through `shell`; VXLAN traffic leaves from `underlay`.
    pub fn new(shell: Shell, underlay: Option<IpAddr>) -> Self {
        let state = State {
            metadata: metadata::Metadata::new(shell.netns_mounts().map(str::to_string)),
            ..State::default()
        };
        Self {
            shell,
            disabled: None,
            underlay,
            controller: None,
            metadata: state.metadata.shared_registry(),
            state: tokio::sync::Mutex::new(state),
        }
    }

    /// No host networking: VMs start without NICs.
    pub fn disabled(reason: impl Into<String>) -> Self {
        Self {
            disabled: Some(reason.into()),
            ..Self::new(Shell::here(), None)
        }
    }

    /// The agent's network: its own namespace, the host of its advertised URL as underlay
    /// address; disabled unless the agent runs as root and advertises a non-loopback address.
    /// Tenant gateways never reach the controller at `controller_url`.
    pub async fn for_agent(advertise_url: &str, controller_url: Option<&str>) -> Self {
        let mut network = Self::for_agent_quiet(advertise_url).await;
        if let Some(url) = controller_url {
            network.controller = underlay::socket_address(url).await;
        }
        match (&network.disabled, network.underlay) {
            (Some(reason), _) => tracing::warn!(reason, "host networking is off"),
            (None, Some(underlay)) => tracing::info!(%underlay, "host networking is on"),
            (None, None) => tracing::info!("host networking is on, without VXLAN"),
        }
        network
    }

    async fn for_agent_quiet(advertise_url: &str) -> Self {
        if !nix::unistd::geteuid().is_root() {
            return Self::disabled("the agent does not run as root");
        }
        let shell = Shell::here().with_netns_mounts(std::env::var(NETNS_MOUNTS_ENV).ok());
        match underlay::local_address(advertise_url).await {
            Ok(Some(underlay)) => Self::new(shell, Some(underlay)),
            Ok(None) => Self::disabled(
                "the agent advertises a loopback address: agents may share this network \
                 namespace, so none of them owns its devices",
            ),
            Err(e) => {
                tracing::warn!(error = %e, "no underlay address: VMs get the bridge, but no VXLAN");
                Self::new(shell, None)
            }
        }
    }

    /// When the guest of VM `id` last reported ready to this host's metadata service (unix
    /// ms), if it has since it was registered here.
    pub fn ready_report(&self, id: uuid::Uuid) -> Option<u64> {
        self.metadata.ready_report(id)
    }

    /// This host's underlay address.
    pub fn underlay(&self) -> Option<IpAddr> {
        self.underlay
    }

    /// Why host networking is off, if it is.
    pub fn disabled_reason(&self) -> Option<&str> {
        self.disabled.as_deref()
    }

    /// Sets up (or repairs) the bridge, the VXLAN device and its peers for `config`.
    pub async fn apply(&self, config: &NetworkConfig) -> Result<Applied, NetError> {
        if let Some(reason) = &self.disabled {
            tracing::debug!(reason, "host networking is off: cloud network not set up");
            return Ok(Applied::default());
        }
        let mut state = self.state.lock().await;
        let mut applied = Applied {
            bridge_created: bridge::ensure(&self.shell, bridge::BRIDGE, NIC_MTU).await?,
            ..Applied::default()
        };
        let Some(local) = self.underlay else {
            warn_once(
                &mut state,
                "no underlay",
                "no underlay address: this host's VMs reach no other host",
            );
            return Ok(applied);
        };
        let params = VxlanParams {
            vni: config.vni,
            local,
        };
        let flat = Segment::flat(config.vni);
        applied.vxlan_created = vxlan::ensure(&self.shell, &flat, params, NIC_MTU).await?;
        let mut peers = BTreeSet::new();
        for peer in &config.peers {
            match underlay::peer_address(peer, local).await {
                Some(addr) if addr != local => {
                    peers.insert(addr);
                }
                Some(_) => {}
                None => warn_once(&mut state, peer, "cannot resolve VXLAN peer; skipped"),
            }
        }
        applied.peers = vxlan::reconcile_peers(&self.shell, vxlan::VXLAN, &peers).await?;
        // Tenant networks present here flood to the same hosts.
        let segments = segment::existing(&self.shell).await?;
        for seg in &segments {
            vxlan::reconcile_peers(&self.shell, &seg.vxlan, &peers).await?;
        }
        let peers_changed = state.peers != peers;
        state.peers = peers;
        if peers_changed && !segments.is_empty() {
            egress::ensure(&self.shell, &self.protected(&state)).await?;
        }
        if applied.changed() {
            tracing::info!(
                vni = config.vni,
                %local,
                bridge_created = applied.bridge_created,
                vxlan_created = applied.vxlan_created,
                peers_added = ?applied.peers.added,
                peers_removed = ?applied.peers.removed,
                "cloud network set up"
            );
        }
        Ok(applied)
    }

    /// Creates the taps of `spec`'s NICs (and the bridge, if needed) and adds the NICs to
    /// `config`. Every QEMU launch calls this; nothing happens for a VM without NICs.
    pub async fn plug(&self, spec: &VmSpec, config: &mut QemuConfig) -> Result<(), NetError> {
        if spec.nics.is_empty() {
            return Ok(());
        }
        let mut state = self.state.lock().await;
        if let Some(reason) = &self.disabled {
            tracing::warn!(
                instance_id = %spec.id,
                reason,
                "host networking is off: the VM starts without its NICs"
            );
            return Ok(());
        }
        for (i, nic) in spec.nics.iter().enumerate() {
            let bridge = match nic.vni {
                Some(vni) => {
                    let seg = Segment::tenant(vni);
                    let peers = &state.peers;
                    if segment::ensure(&self.shell, &seg, self.underlay, peers, NIC_MTU).await? {
                        tracing::info!(vni, bridge = seg.bridge, "network segment created");
                    }
                    self.serve_dhcp(&mut state, &seg, nic);
                    self.route(&mut state, &seg, nic).await?;
                    seg.bridge
                }
                None => {
                    bridge::ensure(&self.shell, bridge::BRIDGE, NIC_MTU).await?;
                    bridge::BRIDGE.to_string()
                }
            };
            let name = tap::tap_name(spec.id, i);
            if tap::ensure(&self.shell, &name, &bridge, NIC_MTU).await? {
                tracing::info!(instance_id = %spec.id, tap = name, bridge, "tap created");
            }
        }
        port_security::secure(&self.shell, &ports_of(spec)).await?;
        state.metadata.registry().register(spec);
        guest::add_to_config(spec, config);
        Ok(())
    }

    /// (Re)applies the port security of `spec`'s NICs, for a VM whose QEMU a restarted agent
    /// adopted (its taps exist; their rules normally do too, and re-applying is harmless).
    pub async fn protect(&self, spec: &VmSpec) -> Result<(), NetError> {
        if spec.nics.is_empty() || self.disabled.is_some() {
            return Ok(());
        }
        let mut state = self.state.lock().await;
        for nic in &spec.nics {
            if let Some(vni) = nic.vni {
                let seg = Segment::tenant(vni);
                self.serve_dhcp(&mut state, &seg, nic);
                self.route(&mut state, &seg, nic).await?;
            }
        }
        port_security::secure(&self.shell, &ports_of(spec)).await?;
        state.metadata.registry().register(spec);
        Ok(())
    }

    /// Adds `nic`'s lease and makes sure its network's DHCP responder runs. A responder that
    /// cannot start is logged: the guest then keeps the address its kernel command line
    /// gives it, and the next launch on this network tries again.
    fn serve_dhcp(&self, state: &mut State, seg: &Segment, nic: &nimbus_agent_api::NicSpec) {
        state.leases.insert(seg.vni, nic);
        if state.responders.contains_key(&seg.vni) {
            return;
        }
        let (leases, zones) = (state.leases.clone(), state.zones.clone());
        match dhcp::Responder::start(self.shell.netns(), &seg.bridge, seg.vni, leases, zones) {
            Ok(r) => {
                state.responders.insert(seg.vni, r);
            }
            Err(e) => tracing::warn!(vni = seg.vni, error = %e, "no DHCP on this network here"),
        }
    }

    /// Makes sure router `r` answers its network's names. A server that cannot start is
    /// logged (names do not resolve there; addresses work) and tried again at the next launch.
    fn serve_dns(&self, state: &mut State, r: &router::Router) {
        if state.dns.contains_key(&r.vni) {
            return;
        }
        let zones = state.zones.clone();
        match dns::Server::start(&r.netns, router::ROUTER_GATEWAY, r.gateway, r.vni, zones) {
            Ok(server) => {
                state.dns.insert(r.vni, server);
            }
            Err(e) => tracing::warn!(vni = r.vni, error = %e, "no DNS on this network here"),
        }
    }

    /// What tenant gateways must not reach: the other hosts and the controller's API.
    fn protected(&self, state: &State) -> egress::Protected {
        let routers = state.routers.keys().copied().collect();
        egress::Protected {
            hosts: state.peers.clone(),
            controller: self.controller,
            floating: state
                .floating
                .as_deref()
                .map(|nats| floating::held(nats, &routers).into_keys().collect())
                .unwrap_or_default(),
        }
    }

    /// The name this host's routers start with (asked once).
    async fn router_host(&self, state: &mut State) -> Result<String, NetError> {
        if let Some(name) = &state.router_host {
            return Ok(name.clone());
        }
        let name = router::host_name(&self.shell).await?;
        state.router_host = Some(name.clone());
        Ok(name)
    }

    /// Makes sure `nic`'s network has its gateway router here (for a NIC with an IPv4
    /// gateway), and the host's egress rules with it.
    async fn route(
        &self,
        state: &mut State,
        seg: &Segment,
        nic: &nimbus_agent_api::NicSpec,
    ) -> Result<(), NetError> {
        let Some(lease) = dhcp::lease_of(nic) else {
            return Ok(());
        };
        let Some(gateway) = lease.gateway.filter(|g| *g != Ipv4Addr::UNSPECIFIED) else {
            return Ok(());
        };
        let host = self.router_host(state).await?;
        let r = router::Router::new(&host, seg.vni, gateway, lease.prefix);
        egress::ensure(&self.shell, &self.protected(state)).await?;
        let nats = nats_of(state, seg.vni);
        if router::ensure(&self.shell, seg, &r, nats.as_deref()).await? {
            tracing::info!(vni = seg.vni, netns = r.netns, %gateway, "network gateway created");
        }
        self.serve_dns(state, &r);
        if let Err(e) = state.metadata.serve(seg.vni, &r.netns).await {
            // The guests still boot and route; the next launch on this network tries again.
            tracing::warn!(vni = seg.vni, error = %e, "no metadata service on this network here");
        }
        // Floating IPs of this network the controller sent before the router existed.
        if state.routers.insert(seg.vni, r.netns).is_none() {
            self.apply_floating(state).await?;
        }
        Ok(())
    }

    /// Removes the taps of `spec`'s NICs (absent ones are fine), and the segments of its
    /// networks that no other port here uses any more.
    pub async fn unplug(&self, spec: &VmSpec) -> Result<(), NetError> {
        if spec.nics.is_empty() || self.disabled.is_some() {
            return Ok(());
        }
        let mut state = self.state.lock().await;
        for a in arrival::addresses(spec) {
            state.arriving.remove(&a);
            state.departed.remove(&a);
        }
        state.metadata.registry().forget(spec);
        let taps: Vec<String> = (0..spec.nics.len())
            .map(|i| tap::tap_name(spec.id, i))
            .collect();
        port_security::release(&self.shell, &taps).await?;
        for i in 0..spec.nics.len() {
            let name = tap::tap_name(spec.id, i);
            if tap::remove(&self.shell, &name).await? {
                tracing::info!(instance_id = %spec.id, tap = name, "tap removed");
            }
        }
        for nic in &spec.nics {
            let Some(vni) = nic.vni else { continue };
            state.leases.remove(vni, nic);
            let seg = Segment::tenant(vni);
            if segment::remove_if_unused(&self.shell, &seg).await? {
                state.responders.remove(&vni);
                state.dns.remove(&vni);
                state.metadata.stop(vni);
                let host = self.router_host(&mut state).await?;
                router::remove(&self.shell, &host, vni).await?;
                state.routers.remove(&vni);
                self.apply_floating(&mut state).await?;
                tracing::info!(
                    vni,
                    bridge = seg.bridge,
                    "network segment removed: no port left"
                );
            }
        }
        Ok(())
    }
}

/// The 1:1 NATs of network `vni`'s router, from the floating IPs the controller last sent
/// (`None`: not sent yet).
fn nats_of(state: &State, vni: u32) -> Option<Vec<router::Nat>> {
    let nats = state.floating.as_deref()?;
    Some(
        floating::held(nats, &[vni].into())
            .into_iter()
            .map(|(floating, (_, private))| router::Nat { floating, private })
            .collect(),
    )
}

/// The port-security view of `spec`'s NICs.
fn ports_of(spec: &VmSpec) -> Vec<port_security::Port> {
    spec.nics
        .iter()
        .enumerate()
        .map(|(i, nic)| port_security::Port::of(tap::tap_name(spec.id, i), nic))
        .collect()
}

fn warn_once(state: &mut State, key: &str, message: &str) {
    if state.warned.insert(key.to_string()) {
        tracing::warn!(detail = key, "{message}");
    }
}

#[cfg(test)]
mod tests {
    use super::guest::tests::{config, nic, spec};
    use super::*;

    fn network() -> NetworkConfig {
        NetworkConfig {
            vni: 42,
            peers: vec!["10.0.0.2".into()],
            cidr: "10.200.0.0/16".into(),
        }
    }

    #[tokio::test]
    async fn a_disabled_network_starts_vms_without_nics() {
        let net = HostNetwork::disabled("unit test");
        assert_eq!(net.disabled_reason(), Some("unit test"));
        let s = spec(vec![nic("52:54:00:00:00:01", "10.200.0.10/16", None)]);
        let mut cfg = config();
        net.plug(&s, &mut cfg).await.expect("plug");
        assert!(cfg.nics.is_empty());
        net.unplug(&s).await.expect("unplug");
        assert_eq!(
            net.apply(&network()).await.expect("apply"),
            Applied::default()
        );
    }

    #[tokio::test]
    async fn a_vm_without_nics_runs_no_command() {
        // Any command would fail: the namespace does not exist.
        let net = HostNetwork::new(Shell::in_netns("nimbus-no-such-netns"), None);
        let s = spec(Vec::new());
        let mut cfg = config();
        net.plug(&s, &mut cfg).await.expect("plug");
        net.unplug(&s).await.expect("unplug");
        assert_eq!(cfg, config());
        let with_nic = spec(vec![nic("52:54:00:00:00:01", "10.200.0.10/16", None)]);
        let err = net.plug(&with_nic, &mut cfg).await.expect_err("must fail");
        assert!(err.to_string().contains("nimbus-no-such-netns"), "{err}");
    }
}
