//! `nimbus network ...` arguments.

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum NetworkCmd {
    /// Create a private network in the project: its own segment, a private IPv4 CIDR that
    /// overlaps no other network of the project (other projects may use the same).
    Create {
        name: String,
        /// e.g. 10.10.0.0/24 (10/8, 172.16/12 or 192.168/16; /8 to /28).
        #[arg(long)]
        cidr: String,
    },
    List,
    Show {
        name: String,
    },
    /// Delete a network no instance is on.
    Delete {
        name: String,
    },
}
