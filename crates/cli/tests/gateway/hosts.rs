//! What the hosts keep of the tenant networks, read as an operator would (`ip`, `nft`, the
//! router namespaces; [`HostNet`]): an agent restart changes none of it, and after the
//! instances and a network are deleted nothing of them is left.

use super::floating::greeting_becomes;
use nimbus_api::{InstanceView, SecurityRuleView};
use nimbus_client::Client;
use nimbus_test_utils::guest::*;
use nimbus_test_utils::hostnet::HostNet;
use nimbus_test_utils::{wait_until, Cloud};
use std::net::SocketAddr;
use std::time::Duration;

/// The network state of every host, by host namespace.
fn read_hosts(cloud: &Cloud) -> Vec<(String, HostNet)> {
    (1..=2)
        .map(|i| {
            let ns = cloud.host_netns(i).expect("hosts in namespaces (root)");
            let net = HostNet::read(&ns);
            (ns, net)
        })
        .collect()
}

/// Both agents killed (-9) and restarted by `nimbus up`'s supervisor leave every host's
/// network as it was (links, routes, ARP answers, nftables objects, routers and theirs),
/// also once the restarted agents applied the controller's rules again (their first apply
/// rebuilds the security-group tables); `pong` (behind a floating IP) answers throughout.
pub async fn agent_restarts_change_nothing(
    cloud: &Cloud,
    clients: &[(&Client, &str)],
    acme_token: &str,
    pong: SocketAddr,
) {
    let before = read_hosts(cloud);
    for host in ["host1", "host2"] {
        let old = cloud.agent_pid(host).expect("agent pid");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(old),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill -9 the agent");
        wait_until(
            "the agent to restart",
            Duration::from_secs(60),
            Duration::from_millis(50),
            || async { (cloud.agent_pid(host).ok()? != old).then_some(()) },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", cloud.log_tail(20)));
    }
    // Serving again: a command runs in every guest (through its host's new agent).
    for (client, name) in clients {
        wait_until(
            "a command in the guest",
            Duration::from_secs(60),
            Duration::from_millis(200),
            || async { client.exec(name, "true").await.ok() },
        )
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let right_after = read_hosts(cloud);
    // A rule added then deleted: every host applies the controller's rules (twice).
    let added: Vec<SecurityRuleView> = json(&cli_ok_as(
        cloud,
        acme_token,
        &[
            "secgroup",
            "rule",
            "add",
            "default",
            "--ingress",
            "--proto",
            "tcp",
            "--port",
            "9999",
            "--cidr",
            "10.99.0.0/16",
            "-o",
            "json",
        ],
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let id = added[0].id.to_string();
    cli_ok_as(
        cloud,
        acme_token,
        &["secgroup", "rule", "delete", "default", &id],
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let applied = read_hosts(cloud);
    for (moment, now) in [("right after", &right_after), ("after new rules", &applied)] {
        for ((ns, was), (_, is)) in before.iter().zip(now) {
            assert!(
                was == is,
                "{ns} {moment} its agent's restart:\n{}",
                was.diff(is)
            );
        }
    }
    assert!(
        greeting_becomes(pong, Some("pong")).await,
        "the floating IP after the agents' restart"
    );
}

/// What names a deleted instance on a host: its taps, addresses and MACs.
pub fn traces_of(i: &InstanceView) -> Vec<String> {
    let mut t = vec![format!("nt{}", &i.id.simple().to_string()[..10])];
    for nic in &i.nics {
        t.push(nic.ip.split('/').next().unwrap_or_default().to_string());
        t.push(nic.mac.clone());
    }
    t
}

/// What names a network on a host: its bridge, VXLAN device and router ports (its router's
/// namespace is [`nimbus_test_utils::routers`]'s).
pub fn traces_of_network(vni: u32) -> Vec<String> {
    ["nb", "nx", "ng", "nu"]
        .iter()
        .map(|p| format!("{p}{vni}"))
        .collect()
}

/// Nothing on any host mentions `traces` (taps, addresses, MACs, devices of deleted
/// instances and networks, a released floating IP), within a few seconds (the controller's
/// next rules drop the deleted ports' security-group entries).
pub async fn nothing_left(cloud: &Cloud, traces: &[String]) {
    let mut left = Vec::new();
    for _ in 0..20 {
        left = read_hosts(cloud)
            .into_iter()
            .flat_map(|(ns, net)| {
                let lines: Vec<String> = net
                    .mentioning(traces)
                    .iter()
                    .map(|l| format!("{ns}: {l}"))
                    .collect();
                lines
            })
            .collect();
        if left.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("left on the hosts:\n{}", left.join("\n"));
}
