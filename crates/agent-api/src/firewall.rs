//! Security groups as the controller sends them to an agent: for every VM port on the host,
//! the allow rules of all its groups, and for every group a rule names, its members'
//! addresses on each network. The agent compiles this into one nftables transaction.

use nimbus_api::{Direction, Protocol};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The whole desired firewall state of one host (every port on it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostFirewall {
    pub ports: Vec<PortFirewall>,
    /// Members of the groups the rules name, per network.
    pub groups: Vec<GroupMembers>,
    /// The floating IPs of the instances on the host: 1:1 NAT in their network's router.
    #[serde(default)]
    pub floating: Vec<FloatingNat>,
    /// The instance names of every network that has a port on the host, for its DNS server.
    #[serde(default)]
    pub names: Vec<NetworkNames>,
}

/// The names a network's DNS server answers (on every host where the network has a port):
/// each instance with a port on the network, as `<name>` and `<name>.<domain>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkNames {
    pub vni: u32,
    /// The network's DNS domain, e.g. `backend.internal`.
    pub domain: String,
    pub records: Vec<NameRecord>,
}

/// One instance's address on a network.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NameRecord {
    /// The instance's name (a DNS label).
    pub name: String,
    /// Its address on the network (IPv4, no prefix length).
    pub address: String,
}

/// One floating IP translated to an instance's private address on network `vni`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FloatingNat {
    pub vni: u32,
    /// The public address (IPv4).
    pub floating: String,
    /// The instance's address on the network (IPv4, no prefix length).
    pub private: String,
}

/// One VM port (NIC) and the rules of its groups.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PortFirewall {
    pub instance_id: Uuid,
    /// Position of the NIC in the guest (the agent knows its tap by it).
    pub nic: usize,
    /// Segment id of the port's network (group rules match members on this network).
    pub vni: u32,
    pub rules: Vec<FirewallRule>,
}

/// One allow rule: traffic of `protocol` (to ports `port_min..=port_max` for tcp/udp) from
/// (ingress) or to (egress) `remote`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FirewallRule {
    pub direction: Direction,
    pub protocol: Protocol,
    pub port_min: Option<u16>,
    pub port_max: Option<u16>,
    pub remote: Remote,
}

/// The other end of a rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Remote {
    /// An IPv4 prefix, e.g. `0.0.0.0/0`.
    Cidr(String),
    /// The members of this group (of the port's project).
    Group(String),
}

/// The IPv4 addresses of a group's members on one network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupMembers {
    pub vni: u32,
    pub group: String,
    pub addresses: Vec<String>,
}

/// What `PUT /firewall` did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FirewallApplied {
    /// Ports with rules now in force on the host.
    pub ports: usize,
    /// False when the host has no networking (its VMs run without NICs: nothing to filter).
    pub enforced: bool,
}
