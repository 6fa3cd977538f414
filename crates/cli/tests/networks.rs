//! End to end: tenant networks through the real binary, with real guests (TCG here) on two
//! hosts. Projects acme and globex each have their `default` network on the same CIDR, so
//! globex's first guest has the very address of acme's first guest; acme adds a network of
//! its own with a fixed address. Asserted the way a user would, from inside the guests:
//! a guest reaches the other guest of its network (across hosts) and not a guest of the
//! other project, nor with a spoofed IP or MAC; the fixed address is the guest's own and
//! DHCP on the host leases it; each host has the segments of the networks it has ports of,
//! and none once the guests are gone.

use nimbus_api::{InstanceView, NetworkView, SecurityRuleView};
use nimbus_client::Client;
use nimbus_test_utils::guest::*;
use nimbus_test_utils::{Cloud, CloudOptions};
use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_nimbus");

/// Whether `ping` from guest `name` reaches `ip` (two tries, bounded).
async fn pings(client: &Client, name: &str, ip: &str) -> bool {
    let out = client
        .exec(
            name,
            &format!("ping -c 2 -W 2 {ip} >/dev/null 2>&1; echo rc=$?"),
        )
        .await
        .unwrap_or_else(|e| panic!("exec in {name}: {e}"));
    out.output.contains("rc=0")
}

/// Waits (bounded: 20 one-second pings) until a ping from `name` to `ip` succeeds (`want`)
/// or fails; answers whether it came to that. Security-group changes reach the hosts within
/// about a second of the API call.
async fn ping_becomes(client: &Client, name: &str, ip: &str, want: bool) -> bool {
    for _ in 0..20 {
        let out = client
            .exec(
                name,
                &format!("ping -c 1 -W 1 {ip} >/dev/null 2>&1; echo rc=$?"),
            )
            .await
            .unwrap_or_else(|e| panic!("exec in {name}: {e}"));
        if out.output.contains("rc=0") == want {
            return true;
        }
    }
    false
}

fn addr(i: &InstanceView) -> String {
    let ip = i.ip.as_deref().expect("an address");
    ip.split('/').next().expect("ip").to_string()
}

/// The tenant bridges (`nb<vni>`) in host `host`'s namespace.
fn bridges(cloud: &Cloud, host: &str) -> Vec<String> {
    let i: usize = host.trim_start_matches("host").parse().expect("host index");
    let ns = cloud.host_netns(i).expect("hosts in namespaces (root)");
    let out = Command::new("ip")
        .args(["-n", &ns, "-o", "link", "show", "type", "bridge"])
        .output()
        .expect("ip");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .filter(|n| n.starts_with("nb"))
        .collect()
}

/// The default image took its lease by DHCP (its resolv.conf names the gateway, the
/// network's DNS server), and each network's DNS answers its own instances' names only.
async fn names_resolve_inside_each_network(
    acme: &Client,
    globex: &Client,
    a2: &InstanceView,
    g1: &InstanceView,
) {
    let resolv = exec(acme, "a1", "cat /etc/resolv.conf").await;
    assert!(resolv.contains("nameserver 10.200.0.1"), "{resolv}");
    let a2_ip = addr(a2);
    for name in ["a2", "a2.default.internal"] {
        let out = exec(acme, "a1", &format!("nslookup {name} 2>&1")).await;
        assert!(out.contains(&a2_ip), "a1 resolving {name}: {out}");
    }
    let out = exec(acme, "a3", "nslookup a3.backend.internal 10.10.0.1 2>&1").await;
    assert!(out.contains("10.10.0.20"), "a3 on backend: {out}");
    // Another project's network has none of acme's names (g1 and a2 are both on a network
    // called default, with the same prefix), nor does acme's have globex's.
    let out = exec(globex, "g1", "nslookup a2 2>&1; true").await;
    assert!(
        out.contains("NXDOMAIN") && !out.contains(&a2_ip),
        "g1: {out}"
    );
    let out = exec(acme, "a1", "nslookup g1 2>&1; true").await;
    assert!(out.contains("NXDOMAIN"), "a1 resolving g1: {out}");
    let out = exec(globex, "g1", "nslookup g1 2>&1").await;
    assert!(out.contains(&addr(g1)), "g1 resolving itself: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_networks_end_to_end() {
    if !nix::unistd::geteuid().is_root() {
        panic!("tenant networks need root: namespaces, bridges and VXLAN per host");
    }
    let cloud = Cloud::start(Path::new(BIN), CloudOptions::default())
        .await
        .expect("start the cloud");
    let acme_token = project_member(&cloud, "acme");
    let globex_token = project_member(&cloud, "globex");
    let acme = cloud.client_as(&acme_token);
    let globex = cloud.client_as(&globex_token);

    // Networks: a default one each, the same CIDR; acme adds its own.
    let nets: Vec<NetworkView> = json(&cli_ok_as(
        &cloud,
        &acme_token,
        &["network", "list", "-o", "json"],
    ));
    assert_eq!(nets.len(), 1);
    cli_ok_as(
        &cloud,
        &acme_token,
        &["network", "create", "backend", "--cidr", "10.10.0.0/24"],
    );
    let err = cli_err_as(
        &cloud,
        &acme_token,
        &["network", "create", "front", "--cidr", "10.10.0.0/25"],
    );
    assert!(err.contains("overlaps"), "{err}");
    let err = cli_err_as(&cloud, &globex_token, &["network", "show", "backend"]);
    assert!(err.contains("not found"), "{err}");

    // Guests: two of acme on its default network, one of globex on its own, one of acme on
    // backend with a fixed address.
    let create = |token: &str, name: &str, extra: &[&str]| {
        let mut args = vec![
            "instance", "create", name, "--flavor", "tiny", "--image", "default",
        ];
        args.extend_from_slice(extra);
        cli_ok_as(&cloud, token, &args);
    };
    create(&acme_token, "a1", &[]);
    create(&acme_token, "a2", &[]);
    create(&globex_token, "g1", &[]);
    create(
        &acme_token,
        "a3",
        &[
            "--network",
            "backend",
            "--network",
            "default",
            "--ip",
            "10.10.0.20",
        ],
    );
    for (client, name) in [(&acme, "a1"), (&acme, "a2"), (&globex, "g1"), (&acme, "a3")] {
        wait_running(client, name).await;
    }
    let (a1, a2, g1) = (
        instance(&acme, "a1").await,
        instance(&acme, "a2").await,
        instance(&globex, "g1").await,
    );
    assert_eq!(addr(&a1), addr(&g1), "overlapping default networks");
    assert_ne!(a1.host, a2.host, "spread over both hosts");

    // Inside a network: reachable (across hosts). Across projects: nothing, although globex's
    // network has the same prefix and g1 the same address as a1.
    assert!(pings(&acme, "a1", &addr(&a2)).await, "a1 -> a2");
    assert!(pings(&acme, "a2", &addr(&a1)).await, "a2 -> a1");
    assert!(
        !pings(&globex, "g1", &addr(&a2)).await,
        "g1 reached acme's a2"
    );
    let neigh = exec(&globex, "g1", "cat /proc/net/arp").await;
    assert!(
        !neigh.contains(a2.mac.as_deref().expect("mac")),
        "g1 learnt acme's a2: {neigh}"
    );

    // Spoofing from inside a guest: another source IP, then another MAC, reaches nobody
    // (port security on the host); its own addresses work again afterwards.
    let a2_ip = addr(&a2);
    let spoofed_ip = exec(
        &acme,
        "a1",
        &format!(
            "ip addr add 10.200.0.99/16 dev eth0; \
             ping -I 10.200.0.99 -c 2 -W 2 {a2_ip} >/dev/null 2>&1; echo rc=$?; \
             ip addr del 10.200.0.99/16 dev eth0"
        ),
    )
    .await;
    assert!(!spoofed_ip.contains("rc=0"), "a spoofed IP got through");
    let spoofed_mac = exec(
        &acme,
        "a1",
        &format!(
            "mac=$(cat /sys/class/net/eth0/address); ip link set eth0 address 52:54:00:99:99:99; \
             ip neigh flush all; ping -c 2 -W 2 {a2_ip} >/dev/null 2>&1; echo rc=$?; \
             ip link set eth0 address $mac; ip neigh flush all"
        ),
    )
    .await;
    assert!(!spoofed_mac.contains("rc=0"), "a spoofed MAC got through");
    assert!(
        pings(&acme, "a1", &a2_ip).await,
        "a1 -> a2 after the spoofing"
    );

    // The fixed address is the guest's own, and DHCP on its host gives each guest the lease
    // the controller decided (g1 and a1 share address and MAC, on different networks).
    let a3_addrs = exec(&acme, "a3", "ip -4 addr show dev eth0").await;
    assert!(a3_addrs.contains("10.10.0.20/24"), "{a3_addrs}");
    let dhcp = "udhcpc -i eth0 -n -q -t 3 -T 1 -s /bin/true 2>&1";
    for (client, name, lease) in [
        (&acme, "a3", "lease of 10.10.0.20 obtained from 10.10.0.1"),
        (
            &globex,
            "g1",
            "lease of 10.200.0.10 obtained from 10.200.0.1",
        ),
    ] {
        let out = exec(client, name, dhcp).await;
        assert!(out.contains(lease), "{name}: {out}");
    }
    names_resolve_inside_each_network(&acme, &globex, &a2, &g1).await;
    // a3's second NIC is on acme's default network: the image runs DHCP on it, and the host
    // answers with the address the controller decided; through it a3 reaches a1.
    let a3 = instance(&acme, "a3").await;
    let second = &a3.nics[1];
    assert_eq!(second.network, "default");
    let wait_eth1 = "for i in $(seq 40); do ip -4 addr show dev eth1 | grep -q inet && break; \
                     sleep 0.5; done; ip -4 addr show dev eth1";
    let eth1 = exec(&acme, "a3", wait_eth1).await;
    assert!(eth1.contains(&second.ip), "{eth1} (want {})", second.ip);
    assert!(
        pings(&acme, "a3", &addr(&a1)).await,
        "a3 -> a1 over its second NIC"
    );

    // Security groups, enforced on the hosts: a1 moved into a new group (no inbound) stops
    // answering a2 (on the other host); an ICMP rule opens it, also after a1 live-migrates;
    // once the rule is deleted, new pings fail again. a2 stays in `default` (inbound from its
    // members).
    let (a1_ip, a2_ip) = (addr(&a1), addr(&a2));
    cli_ok_as(&cloud, &acme_token, &["secgroup", "create", "web"]);
    cli_ok_as(
        &cloud,
        &acme_token,
        &["instance", "set", "a1", "--secgroup", "web"],
    );
    assert!(
        ping_becomes(&acme, "a2", &a1_ip, false).await,
        "a1 in a group without inbound rules still answers"
    );
    let rules: Vec<SecurityRuleView> = json(&cli_ok_as(
        &cloud,
        &acme_token,
        &[
            "secgroup",
            "rule",
            "add",
            "web",
            "--ingress",
            "--proto",
            "icmp",
            "--cidr",
            "10.200.0.0/16",
            "-o",
            "json",
        ],
    ));
    assert!(
        ping_becomes(&acme, "a2", &a1_ip, true).await,
        "the ICMP rule does not open a1"
    );
    // The rules follow a1 when it moves: open right after the move, closed by the rule's
    // deletion below on its new host.
    let before = instance(&acme, "a1").await.host;
    // (Migration is an admin's act.)
    cli_ok(
        &cloud,
        &["instance", "migrate", "a1", "--project", "acme", "--wait"],
    );
    assert_ne!(instance(&acme, "a1").await.host, before, "a1 moved");
    assert!(
        pings(&acme, "a2", &a1_ip).await,
        "a1's rule did not follow it to its new host"
    );
    cli_ok_as(
        &cloud,
        &acme_token,
        &[
            "secgroup",
            "rule",
            "delete",
            "web",
            &rules[0].id.to_string(),
        ],
    );
    assert!(
        ping_becomes(&acme, "a2", &a1_ip, false).await,
        "a1 still answers after its rule was deleted"
    );
    assert!(
        !pings(&acme, "a1", &a2_ip).await,
        "a2 (default: inbound from members only) answers a1, no longer a member"
    );
    cli_ok_as(
        &cloud,
        &acme_token,
        &["instance", "set", "a1", "--secgroup", "default"],
    );
    assert!(
        ping_becomes(&acme, "a2", &a1_ip, true).await,
        "a1 back in default is not reachable from a2"
    );

    // Each host has a segment per network it has ports of; none is left after the guests.
    let all_bridges: Vec<String> = ["host1", "host2"]
        .iter()
        .flat_map(|h| bridges(&cloud, h))
        .collect();
    let acme_default: NetworkView = json(&cli_ok_as(
        &cloud,
        &acme_token,
        &["network", "show", "default", "-o", "json"],
    ));
    assert!(
        all_bridges.contains(&format!("nb{}", acme_default.vni)),
        "{all_bridges:?}"
    );
    let err = cli_err_as(&cloud, &acme_token, &["network", "delete", "backend"]);
    assert!(err.contains("still has"), "{err}");
    for (token, name) in [
        (&acme_token, "a1"),
        (&acme_token, "a2"),
        (&globex_token, "g1"),
        (&acme_token, "a3"),
    ] {
        cli_ok_as(&cloud, token, &["instance", "delete", name, "--wait"]);
    }
    for h in ["host1", "host2"] {
        assert!(
            bridges(&cloud, h).is_empty(),
            "{h}: {:?}",
            bridges(&cloud, h)
        );
    }
    cli_ok_as(&cloud, &acme_token, &["network", "delete", "backend"]);
}
