//! Harness for end-to-end tests: a real cloud started through the real `nimbus` binary.
//!
//! [`Cloud::start`] runs `nimbus up` in a temporary data directory, with its hosts in network
//! namespaces of their own when run as root (names and subnet unique per cloud, even in one
//! process: `netname.rs`), and waits (bounded) until every host has registered. Dropping the [`Cloud`] stops it and
//! removes everything it made: VMs (by the pids in their state directories: only processes
//! this cloud started), namespaces, the bridge and the temporary directory; when the test
//! failed (panicked), the cloud's logs are kept first and their place printed ([`logs`]).

mod cloud;
pub mod controllers;
pub mod damage;
pub mod disks;
pub mod guest;
pub mod hostnet;
mod link;
pub mod logs;
mod netclient;
mod netname;
mod routers;
pub mod specs;
mod tls;
mod wait;

pub use cloud::{Cloud, CloudOptions};
pub use link::LinkFault;
pub use netclient::NetClient;
pub use routers::{remove_routers, routers};
pub use tls::console_connector;
pub use wait::wait_until;
