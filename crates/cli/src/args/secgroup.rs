//! `nimbus secgroup ...` arguments.

use clap::{Args, Subcommand, ValueEnum};

#[derive(Debug, Subcommand)]
pub enum SecgroupCmd {
    /// Create a security group: no inbound and all outbound traffic until rules are added.
    Create {
        name: String,
    },
    List,
    /// Print a group with its rules.
    Show {
        name: String,
    },
    /// Delete a group no instance is in and no other group's rule names.
    Delete {
        name: String,
    },
    /// Allow rules of a group.
    #[command(subcommand)]
    Rule(RuleCmd),
}

#[derive(Debug, Subcommand)]
pub enum RuleCmd {
    /// Allow traffic (stateful: replies of an allowed connection are allowed too).
    Add(RuleAdd),
    /// Delete a rule: new connections are refused at once; established ones go on.
    Delete { group: String, rule_id: u64 },
}

#[derive(Debug, Args)]
pub struct RuleAdd {
    pub group: String,
    /// Traffic towards the group's instances.
    #[arg(long, conflicts_with = "egress", required_unless_present = "egress")]
    pub ingress: bool,
    /// Traffic from the group's instances.
    #[arg(long)]
    pub egress: bool,
    #[arg(long, value_enum)]
    pub proto: Proto,
    /// A port or range P-Q (tcp and udp only) [default: all ports].
    #[arg(long)]
    pub port: Option<String>,
    /// Remote addresses, e.g. 0.0.0.0/0.
    #[arg(
        long,
        conflicts_with = "remote_group",
        required_unless_present = "remote_group"
    )]
    pub cidr: Option<String>,
    /// Remote addresses: those of the members of this group of the project.
    #[arg(long = "group", id = "remote_group")]
    pub remote_group: Option<String>,
}

/// `--proto` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
    Any,
}
