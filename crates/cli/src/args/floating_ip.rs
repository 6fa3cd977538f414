//! `nimbus ip ...` arguments.

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum IpCmd {
    /// Allocate a floating IP to the project from the cloud's external pool.
    Allocate,
    /// The project's floating IPs and what they are attached to.
    List,
    /// Translate a floating IP to an instance's first NIC (1:1 NAT on its host), so the
    /// instance is reachable at it from outside the cloud.
    Attach { ip: String, instance: String },
    /// Stop translating a floating IP (the project keeps it).
    Detach { ip: String },
    /// Return a detached floating IP to the pool.
    Release { ip: String },
}
