//! One network namespace per host, joined by a bridge in the root namespace:
//!
//! ```text
//!   root ns: bridge <name>-br 10.249.X.1/24 (the controller listens here too)
//!     ├─ veth <name>-h1 ── netns <name>-host1: eth0 10.249.X.11/24  (agent of host1)
//!     └─ veth <name>-h2 ── netns <name>-host2: eth0 10.249.X.12/24  (agent of host2)
//! ```
//! Setup is idempotent: what exists is kept, so a restarted `nimbus up` finds its VMs' hosts
//! as they were.

use anyhow::{bail, Context};
use std::net::Ipv4Addr;

/// The network of the local hosts.
#[derive(Debug, Clone)]
pub struct HostNetwork {
    pub bridge_ip: Ipv4Addr,
    pub hosts: Vec<HostNet>,
}

/// One host's namespace and address.
#[derive(Debug, Clone)]
pub struct HostNet {
    pub netns: String,
    pub ip: Ipv4Addr,
}

async fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = tokio::process::Command::new("ip")
        .args(args)
        .output()
        .await
        .context("cannot run `ip` (install iproute2)")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

async fn exists(args: &[&str]) -> bool {
    tokio::process::Command::new("ip")
        .args(args)
        .output()
        .await
        .map(|o| o.status.success() && !o.stdout.is_empty())
        .unwrap_or(false)
}

impl HostNetwork {
    /// The floating IPs of this cloud: the top quarter of the hosts' /24 (hosts use .11 up),
    /// so the machine's root namespace reaches them on its bridge, where the host holding
    /// one answers ARP for it.
    pub fn floating_ip_pool(&self) -> ipnet::Ipv4Net {
        let [a, b, c, _] = self.bridge_ip.octets();
        ipnet::Ipv4Net::new(std::net::Ipv4Addr::new(a, b, c, 192), 26)
            .unwrap_or_else(|_| unreachable!("26 is a valid IPv4 prefix length"))
    }

    /// Creates (or finds) the bridge and the hosts' namespaces.
    pub async fn setup(name: &str, index: u8, hosts: u32) -> anyhow::Result<Self> {
        let bridge = format!("{name}-br");
        let bridge_ip = Ipv4Addr::new(10, 249, index, 1);
        if !exists(&["link", "show", &bridge]).await {
            ip(&["link", "add", &bridge, "type", "bridge"]).await?;
        }
        let cidr = format!("{bridge_ip}/24");
        if !exists(&["addr", "show", "dev", &bridge, "to", &cidr]).await {
            ip(&["addr", "add", &cidr, "dev", &bridge]).await?;
        }
        ip(&["link", "set", &bridge, "up"]).await?;
        let mut out = Vec::new();
        for i in 1..=hosts {
            let netns = format!("{name}-host{i}");
            let veth = format!("{name}-h{i}");
            let host_ip = Ipv4Addr::new(10, 249, index, 10 + i as u8);
            if !exists(&["netns", "pids", &netns]).await
                && !std::path::Path::new("/run/netns").join(&netns).exists()
            {
                ip(&["netns", "add", &netns]).await?;
            }
            if !exists(&["link", "show", &veth]).await {
                ip(&[
                    "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &netns,
                ])
                .await?;
            }
            ip(&["link", "set", &veth, "master", &bridge]).await?;
            ip(&["link", "set", &veth, "up"]).await?;
            let cidr = format!("{host_ip}/24");
            if !exists(&["-n", &netns, "addr", "show", "dev", "eth0", "to", &cidr]).await {
                ip(&["-n", &netns, "addr", "add", &cidr, "dev", "eth0"]).await?;
            }
            ip(&["-n", &netns, "link", "set", "eth0", "up"]).await?;
            ip(&["-n", &netns, "link", "set", "lo", "up"]).await?;
            out.push(HostNet { netns, ip: host_ip });
        }
        Ok(Self {
            bridge_ip,
            hosts: out,
        })
    }
}
