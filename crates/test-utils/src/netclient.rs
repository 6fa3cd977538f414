//! A client on a tenant network, for tests that talk to guests over it (SSH, ...): a network
//! namespace of its own, plugged by a veth pair into the tenant bridge that carries a guest's
//! port on one host, with a free address of the network. It stands in for what a user has
//! (the network's gateway, a floating IP) until those exist; traffic from it crosses the
//! host's port security and security groups like any outside client's.
//!
//! Names carry the test's pid, so parallel test processes never collide; dropping the
//! client deletes its namespace, and with it both ends of the veth pair.

use anyhow::{bail, Context};
use std::net::Ipv4Addr;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

/// The client's host number in the network (the controller's reserved range is 1..=9).
const CLIENT_HOST: u32 = 9;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A namespace plugged into a tenant network; see the module documentation.
pub struct NetClient {
    netns: String,
    addr: Ipv4Addr,
}

impl NetClient {
    /// Plugs a new client into the bridge of tenant network `vni` (`nb<vni>`, the agent's
    /// name for it) in host namespace `host_netns`, with host address 9 of the network of
    /// `guest_cidr` (a guest's address: `10.200.0.10/16` -> `10.200.0.9/16`): the controller
    /// reserves the first ten for the network's gateway and services and never gives them
    /// to instances; 9 is the last of them, the farthest from the gateway (1).
    pub fn plug(host_netns: &str, vni: u32, guest_cidr: &str) -> anyhow::Result<Self> {
        let bridge = format!("nb{vni}");
        let (addr, prefix) = client_address(guest_cidr)?;
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let client = NetClient {
            netns: format!("nimbus-nc-{pid}-{n}"),
            addr,
        };
        // Not "nt*": the host drops whatever such ports send unless they are a VM's.
        let (outer, inner) = (format!("nc{pid}x{n}"), format!("nc{pid}y{n}"));
        run(&["ip", "netns", "add", &client.netns])?;
        let ns = client.netns.as_str();
        run(&[
            "ip", "link", "add", &outer, "netns", host_netns, "type", "veth", "peer", "name",
            &inner, "netns", ns,
        ])?;
        run(&[
            "ip", "-n", host_netns, "link", "set", &outer, "master", &bridge, "up",
        ])?;
        run(&[
            "ip",
            "-n",
            ns,
            "addr",
            "add",
            &format!("{addr}/{prefix}"),
            "dev",
            &inner,
        ])?;
        run(&["ip", "-n", ns, "link", "set", &inner, "up"])?;
        run(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        Ok(client)
    }

    /// The client's address on the network.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// A command that runs `program` in the client's namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns, program]);
        cmd
    }
}

impl Drop for NetClient {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}

/// Host address [`CLIENT_HOST`] of `cidr`'s network, and its prefix length.
fn client_address(cidr: &str) -> anyhow::Result<(Ipv4Addr, u8)> {
    let (ip, prefix) = cidr
        .split_once('/')
        .with_context(|| format!("{cidr}: not address/prefix"))?;
    let ip: Ipv4Addr = ip.parse().with_context(|| format!("{cidr}: bad address"))?;
    let prefix: u8 = prefix
        .parse()
        .with_context(|| format!("{cidr}: bad prefix"))?;
    if !(8..=28).contains(&prefix) {
        bail!("{cidr}: prefix too long or short for a network with reserved addresses");
    }
    let mask = u32::MAX << (32 - u32::from(prefix));
    Ok((Ipv4Addr::from((u32::from(ip) & mask) + CLIENT_HOST), prefix))
}

fn output(args: &[&str]) -> anyhow::Result<Output> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("run {}", args[0]))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

fn run(args: &[&str]) -> anyhow::Result<()> {
    output(args).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_takes_a_reserved_address_of_the_network() {
        assert_eq!(
            client_address("10.200.3.10/16").expect("ok"),
            (Ipv4Addr::new(10, 200, 0, 9), 16)
        );
        assert_eq!(
            client_address("10.10.0.20/24").expect("ok"),
            (Ipv4Addr::new(10, 10, 0, 9), 24)
        );
        assert!(client_address("10.0.0.1").is_err());
        assert!(client_address("10.0.0.1/32").is_err());
    }
}
