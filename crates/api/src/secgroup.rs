//! Security groups (EC2 semantics): stateful allow rules on an instance's ports. A new group
//! allows no inbound and all outbound traffic; the project's `default` group also allows
//! inbound traffic from its own members. An instance is in one or more groups of its project;
//! what any of its groups allows is allowed.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The group every project gets at creation, and every instance joins unless told otherwise.
pub const DEFAULT_SECGROUP: &str = "default";

/// Which traffic a rule opens: towards the instance, or from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ingress" => Some(Direction::Ingress),
            "egress" => Some(Direction::Egress),
            _ => None,
        }
    }
}

/// The IP protocol a rule opens; ports only apply to `tcp` and `udp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
    Any,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Icmp => "icmp",
            Protocol::Any => "any",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "tcp" => Some(Protocol::Tcp),
            "udp" => Some(Protocol::Udp),
            "icmp" => Some(Protocol::Icmp),
            "any" => Some(Protocol::Any),
            _ => None,
        }
    }

    /// Whether rules of this protocol may name ports.
    pub fn has_ports(self) -> bool {
        matches!(self, Protocol::Tcp | Protocol::Udp)
    }
}

/// One allow rule of a group. Exactly one of `cidr` and `group` is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SecurityRuleView {
    /// Id of the rule (for `nimbus secgroup rule delete`).
    pub id: u64,
    pub direction: Direction,
    pub protocol: Protocol,
    /// First port of the range (tcp/udp); none for all ports.
    pub port_min: Option<u16>,
    /// Last port of the range (equal to `port_min` for one port).
    pub port_max: Option<u16>,
    /// The remote addresses: an IPv4 prefix, e.g. `0.0.0.0/0`.
    pub cidr: Option<String>,
    /// The remote addresses: those of the members of this group (of the same project).
    pub group: Option<String>,
}

/// A security group as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SecurityGroupView {
    pub name: String,
    pub project: String,
    pub rules: Vec<SecurityRuleView>,
    /// Instances in the group.
    pub members: u64,
    pub created_at: DateTime<Utc>,
}

/// Body of `POST /v1/secgroups`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CreateSecurityGroup {
    pub name: String,
}

/// Body of `POST /v1/secgroups/{secgroup}/rules`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CreateSecurityRule {
    pub direction: Direction,
    pub protocol: Protocol,
    /// First port (1-65535, tcp/udp only); none for all ports.
    #[serde(default)]
    pub port_min: Option<u16>,
    /// Last port (at least `port_min`); none for `port_min` alone.
    #[serde(default)]
    pub port_max: Option<u16>,
    /// Remote IPv4 prefix, e.g. `10.10.0.0/24` or `0.0.0.0/0`.
    #[serde(default)]
    pub cidr: Option<String>,
    /// Remote group of the same project (its members' addresses).
    #[serde(default)]
    pub group: Option<String>,
}

/// Body of `PUT /v1/instances/{instance}/secgroups`: the instance's groups from now on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SetSecurityGroups {
    pub secgroups: Vec<String>,
}
