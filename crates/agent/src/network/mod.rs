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
//!
//! Where each part lives: `registration` (the flat network, every VXLAN device's flood
//! list), `ports` (where a VM's ports are plugged: taps, port security, DHCP lease),
//! `gateway` (each network's router with its DNS and metadata servers, and the host's
//! egress rules), `firewall` (where traffic is filtered and translated: the controller's
//! security groups, names and floating IPs), `arrival` (a VM migrating in claims its
//! floating IPs once it runs here).

mod arrival;
pub mod bridge;
pub mod command;
pub mod dhcp;
pub mod dns;
pub mod egress;
pub mod error;
mod firewall;
pub mod floating;
mod gateway;
pub mod guest;
pub mod link;
pub mod metadata;
pub mod port_security;
mod ports;
mod registration;
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
pub use registration::Applied;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

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
    /// Whether a registration was answered since the agent started (`peers` is the pool).
    registered: bool,
    /// The egress protections in force when the agent started (a previous run's, read back
    /// by [`egress::in_force`]): kept until the controller tells this run, so that a restart
    /// never opens a path a router must not have ([`HostNetwork::protected`]).
    kept: egress::Protected,
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

impl HostNetwork {
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
        let network = match underlay::local_address(advertise_url).await {
            Ok(Some(underlay)) => Self::new(shell, Some(underlay)),
            Ok(None) => {
                return Self::disabled(
                    "the agent advertises a loopback address: agents may share this network \
                     namespace, so none of them owns its devices",
                )
            }
            Err(e) => {
                tracing::warn!(error = %e, "no underlay address: VMs get the bridge, but no VXLAN");
                Self::new(shell, None)
            }
        };
        network.keeping_what_runs().await
    }

    /// Keeps the egress protections a previous run of the agent left in force until the
    /// controller tells this run what they are ([`State::kept`]).
    async fn keeping_what_runs(mut self) -> Self {
        match egress::in_force(&self.shell).await {
            Ok(kept) => self.state.get_mut().kept = kept,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the egress rules in force; they are made anew from what the controller sends")
            }
        }
        self
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
    use nimbus_agent_api::NetworkConfig;

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
