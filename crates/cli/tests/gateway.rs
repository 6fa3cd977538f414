//! End to end: every tenant network's gateway, on the host of each guest, through the real
//! binary with real guests (TCG here) on two hosts. acme has its default network and a
//! second one (`backend`); globex its default network, on the same CIDR as acme's. Asserted
//! from inside the guests, as a user would: a guest reaches a TCP server in the machine's
//! root namespace ("the outside") through its gateway, masqueraded to its host's address;
//! nothing crosses from one network to another through the gateways (not even to a network
//! of the same project), nor reaches a host's agent API or the controller's API; each host
//! answers for the gateway itself (its MAC is never learnt behind the VXLAN device); the
//! routers go with the last guest of their network.
//!
//! Floating IPs on the same guests: a server in a guest is reachable from the root namespace
//! at its floating IP, not after detach, again after attach; bad requests are refused with
//! their reason; a connection through the floating IP and one through the private IP (from
//! another guest) carry a line before and after a live migration of the guest, and the old
//! host keeps nothing of it; then (`gateway/follow.rs`) its DHCP renewal gives the same
//! address on the new host, and its floating IP and rules work after a drain and a snapshot
//! restore.
//!
//! The metadata service (169.254.169.254, IMDSv2) on the same guests: a request without a
//! token is refused; each guest reads its own instance's values (also two guests of two
//! projects with the same address); another guest can use neither the first one's token nor
//! its address (port security drops the forged source at the tap); the agent's port is not
//! reachable there; `public-ipv4` is the floating IP, on the new host after a migration too.
//!
//! The hosts, read as an operator would (`gateway/hosts.rs`): both agents killed with -9 and
//! restarted change nothing of their networks; once the guests and a network are deleted,
//! nothing on either host names them.

#[path = "gateway/floating.rs"]
mod floating;
#[path = "gateway/follow.rs"]
mod follow;
#[path = "gateway/hosts.rs"]
mod hosts;
#[path = "gateway/metadata.rs"]
mod metadata;

use floating::*;
use nimbus_api::{InstanceView, NetworkView};
use nimbus_client::Client;
use nimbus_test_utils::guest::*;
use nimbus_test_utils::{routers, Cloud, CloudOptions};
use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_nimbus");
/// The agents' API port in the hosts' namespaces (`nimbus up`).
const AGENT_PORT: u16 = 7701;
/// The gateway MAC of every network on every host (agent `network::router`).
const GATEWAY_MAC: &str = "02:6e:62:67:77:01";

/// Whether an HTTP server at `ip:port` answers guest `name` (within 3 s).
async fn answers_http(client: &Client, name: &str, ip: &str, port: u16) -> bool {
    let cmd =
        format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {ip} {port} 2>&1 | head -c 12");
    let out = client
        .exec(name, &cmd)
        .await
        .unwrap_or_else(|e| panic!("exec in {name}: {e}"));
    out.output.contains("HTTP/")
}

/// Whether a ping from guest `name` to `ip` is answered (two tries, bounded).
async fn pings(client: &Client, name: &str, ip: &str) -> bool {
    let cmd = format!("ping -c 2 -W 2 {ip} >/dev/null 2>&1; echo rc=$?");
    let out = client
        .exec(name, &cmd)
        .await
        .unwrap_or_else(|e| panic!("exec in {name}: {e}"));
    out.output.contains("rc=0")
}

/// Sends a line from guest `name` to `listener` (in this, the root, namespace); answers the
/// line received and the address it came from. The server closes after the line, so the
/// guest's `nc` ends.
async fn send_out(client: &Client, name: &str, listener: &TcpListener) -> (String, Ipv4Addr) {
    let addr = listener.local_addr().expect("addr");
    let server = listener.try_clone().expect("listener");
    let received = std::thread::spawn(move || accept_line(&server, Duration::from_secs(20)));
    let cmd = format!(
        "echo hello-from-{name} | nc -w 5 {} {} ; echo rc=$?",
        addr.ip(),
        addr.port()
    );
    let out = client.exec(name, &cmd).await.expect("exec");
    match received.join().expect("server thread") {
        Some(got) => got,
        None => panic!("{name} never connected; the guest said {}", out.output),
    }
}

/// The first line of the first connection to `listener` within `wait`, and its source.
fn accept_line(listener: &TcpListener, wait: Duration) -> Option<(String, Ipv4Addr)> {
    use std::io::BufRead;
    listener.set_nonblocking(true).ok()?;
    let deadline = Instant::now() + wait;
    let (conn, peer) = loop {
        match listener.accept() {
            Ok(c) => break c,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(_) => return None,
        }
    };
    conn.set_nonblocking(false).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut line = String::new();
    std::io::BufReader::new(conn).read_line(&mut line).ok()?;
    let std::net::IpAddr::V4(peer) = peer.ip() else {
        return None;
    };
    Some((line.trim().to_string(), peer))
}

fn addr(i: &InstanceView) -> String {
    let ip = i.ip.as_deref().expect("an address");
    ip.split('/').next().expect("ip").to_string()
}

fn host_index(i: &InstanceView) -> usize {
    let host = i.host.as_deref().expect("placed");
    host.trim_start_matches("host").parse().expect("host index")
}

/// The transit address of network `vni`'s routers (agent `network::router`).
fn transit(vni: u32) -> String {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 0)) + vni).to_string()
}

/// The bridge port the gateway MAC is learnt on, in host namespace `ns`.
fn gateway_port(ns: &str, vni: u32) -> String {
    let out = Command::new("bridge")
        .args(["-n", ns, "fdb", "show", "br", &format!("nb{vni}")])
        .output()
        .expect("bridge");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| l.starts_with(GATEWAY_MAC))
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap_or("none")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_end_to_end() {
    if !nix::unistd::geteuid().is_root() {
        panic!("gateways need root: namespaces, bridges, nftables per host");
    }
    let started = Instant::now();
    let cloud = Cloud::start(Path::new(BIN), CloudOptions::default())
        .await
        .expect("start the cloud");
    let acme_token = project_member(&cloud, "acme");
    let globex_token = project_member(&cloud, "globex");
    let acme = cloud.client_as(&acme_token);
    let globex = cloud.client_as(&globex_token);
    cli_ok_as(
        &cloud,
        &acme_token,
        &["network", "create", "backend", "--cidr", "10.10.0.0/24"],
    );
    let create = |token: &str, name: &str, extra: &[&str]| {
        let mut args = vec![
            "instance", "create", name, "--flavor", "tiny", "--image", "default",
        ];
        args.extend_from_slice(extra);
        cli_ok_as(&cloud, token, &args);
    };
    create(&acme_token, "a1", &[]);
    create(&acme_token, "a2", &["--network", "backend"]);
    create(&globex_token, "g1", &[]);
    create(&acme_token, "a3", &[]);
    for (client, name) in [(&acme, "a1"), (&acme, "a2"), (&globex, "g1"), (&acme, "a3")] {
        wait_running(client, name).await;
    }
    let (a1, a2, g1) = (
        instance(&acme, "a1").await,
        instance(&acme, "a2").await,
        instance(&globex, "g1").await,
    );
    let vni = |token: &str, net: &str| -> u32 {
        let n: NetworkView = json(&cli_ok_as(
            &cloud,
            token,
            &["network", "show", net, "-o", "json"],
        ));
        n.vni
    };
    let (acme_default, backend, globex_default) = (
        vni(&acme_token, "default"),
        vni(&acme_token, "backend"),
        vni(&globex_token, "default"),
    );

    // Egress: each guest reaches a server in the root namespace, masqueraded to the address
    // of its own host.
    let (outside, _) = cloud.underlay(1);
    let listener = TcpListener::bind((outside, 0)).expect("listen in the root namespace");
    for (client, i) in [(&acme, &a1), (&acme, &a2), (&globex, &g1)] {
        let name = &i.name;
        let (line, from) = send_out(client, name, &listener).await;
        assert_eq!(line, format!("hello-from-{name}"));
        assert_eq!(
            from,
            cloud.underlay(host_index(i)).1,
            "{name}: not its host's address"
        );
    }

    // The gateway is each host's own: its MAC is learnt on the router's port of the bridge,
    // never behind the VXLAN device, on every host with the network.
    for i in [&a1, &a2, &g1] {
        let ns = cloud.host_netns(host_index(i)).expect("netns");
        let net_vni = if i.name == "a1" {
            acme_default
        } else if i.name == "a2" {
            backend
        } else {
            globex_default
        };
        assert_eq!(
            gateway_port(&ns, net_vni),
            format!("ng{net_vni}"),
            "{}",
            i.name
        );
    }

    // No path between networks through the gateways: not to another project's network, not
    // to another network of the same project (their private addresses, or their routers'
    // addresses, which the hosts do route).
    for (client, from, to_ip) in [
        (&globex, "g1", addr(&a2)),
        (&globex, "g1", transit(backend)),
        (&globex, "g1", transit(acme_default)),
        (&acme, "a1", addr(&a2)),
        (&acme, "a1", transit(backend)),
        (&acme, "a2", transit(acme_default)),
        (&acme, "a2", transit(globex_default)),
    ] {
        assert!(!pings(client, from, &to_ip).await, "{from} reached {to_ip}");
    }
    // Nor the hosts' agent APIs (its own host's, the other's) or the controller's API; the
    // outside on another port, yes.
    let controller_port: u16 = cloud
        .api()
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .expect("controller port");
    for (client, i) in [(&globex, &g1), (&acme, &a2)] {
        for host in 1..=2 {
            let host_ip = cloud.underlay(host).1.to_string();
            assert!(
                !answers_http(client, &i.name, &host_ip, AGENT_PORT).await,
                "{} reached the agent of host{host}",
                i.name
            );
        }
        assert!(
            !answers_http(client, &i.name, &outside.to_string(), controller_port).await,
            "{} reached the controller",
            i.name
        );
    }
    // The same probe reaches an HTTP server outside (so the refusals above are real).
    let http = TcpListener::bind((outside, 0)).expect("listen");
    let http_port = http.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        use std::io::Write;
        if let Ok((mut conn, _)) = http.accept() {
            let _ = conn.write_all(b"HTTP/1.0 200 OK\r\n\r\n");
        }
    });
    assert!(
        answers_http(&globex, "g1", &outside.to_string(), http_port).await,
        "g1 does not reach an HTTP server outside"
    );

    let a3 = instance(&acme, "a3").await;
    metadata_service(&cloud, &acme, &globex, [&a1, &a3, &g1]).await;
    let (fip, pong) = floating_ips(&cloud, &acme_token, &globex_token, &acme).await;
    let guests = [(&acme, "a1"), (&acme, "a2"), (&globex, "g1"), (&acme, "a3")];
    let restarts = Instant::now();
    hosts::agent_restarts_change_nothing(&cloud, &guests, &acme_token, pong).await;
    eprintln!("agent restarts: {:.0} s", restarts.elapsed().as_secs_f64());
    cli_ok_as(&cloud, &acme_token, &["ip", "detach", &fip]);
    cli_ok_as(&cloud, &acme_token, &["ip", "release", &fip]);

    // The routers go with the last guest of their network, and nothing else of the guests,
    // their networks (backend deleted too) or the released floating IP stays on the hosts.
    let mut traces = vec![fip];
    for (client, name) in guests {
        traces.extend(hosts::traces_of(&instance(client, name).await));
    }
    for vni in [acme_default, backend, globex_default] {
        traces.extend(hosts::traces_of_network(vni));
    }
    for (token, name) in [
        (&acme_token, "a1"),
        (&acme_token, "a2"),
        (&globex_token, "g1"),
        (&acme_token, "a3"),
    ] {
        cli_ok_as(&cloud, token, &["instance", "delete", name, "--wait"]);
    }
    for host in 1..=2 {
        let ns = cloud.host_netns(host).expect("netns");
        assert!(routers(&ns).is_empty(), "{ns}: {:?}", routers(&ns));
    }
    cli_ok_as(&cloud, &acme_token, &["network", "delete", "backend"]);
    hosts::nothing_left(&cloud, &traces).await;
    eprintln!(
        "gateways_end_to_end: {:.0} s",
        started.elapsed().as_secs_f64()
    );
}

/// The metadata service, as the guests see it.
async fn metadata_service(
    cloud: &Cloud,
    acme: &Client,
    globex: &Client,
    guests: [&InstanceView; 3],
) {
    let [a1, a3, g1] = guests;
    let started = Instant::now();
    let no_token = metadata::get(acme, "a1", "/latest/meta-data/instance-id", None).await;
    assert_eq!(no_token.status, 401, "{no_token:?}");
    let listing = metadata::read(acme, "a1", "").await;
    assert_eq!(listing.status, 200, "{listing:?}");
    for key in ["instance-id", "hostname", "local-hostname", "local-ipv4"] {
        assert!(listing.body.lines().any(|l| l == key), "{key}: {listing:?}");
    }
    for (client, i) in [(acme, a1), (acme, a3), (globex, g1)] {
        let name = &i.name;
        for (key, want) in [
            ("instance-id", i.id.to_string()),
            ("hostname", name.clone()),
            ("local-ipv4", addr(i)),
        ] {
            let got = metadata::read(client, name, key).await;
            assert_eq!((got.status, got.body), (200, want), "{name} {key}");
        }
        let none = metadata::read(client, name, "public-ipv4").await;
        assert_eq!(none.status, 404, "{name}: no floating IP yet: {none:?}");
    }
    // Neither the first guest's token nor its address serves another guest. a3 on a1's host
    // (moved there if needed), so only port security stands between a3 and a1's data.
    let a1_token = metadata::token(acme, "a1").await;
    let stolen = metadata::get(acme, "a3", "/latest/meta-data/instance-id", Some(&a1_token)).await;
    assert_eq!(stolen.status, 401, "a3 with a1's token: {stolen:?}");
    if host_index(a3) != host_index(a1) {
        let to = a1.host.as_deref().expect("placed");
        cli_ok(
            cloud,
            &[
                "instance",
                "migrate",
                "a3",
                "--to",
                to,
                "--project",
                "acme",
                "--wait",
            ],
        );
    }
    let a1_ip = addr(a1);
    let net: NetworkView = json(&cli_ok(
        cloud,
        &[
            "network",
            "show",
            "default",
            "--project",
            "acme",
            "-o",
            "json",
        ],
    ));
    let forged = metadata::get_as(
        acme,
        "a3",
        &metadata::forge_source(&a1_ip, &net.gateway),
        "/latest/meta-data/instance-id",
        Some(&a1_token),
    )
    .await;
    let undone = acme
        .exec("a3", &metadata::unforge(&a1_ip))
        .await
        .expect("exec");
    assert!(undone.output.contains("done"), "{undone:?}");
    assert_eq!(forged, None, "a3 forging a1's address got an answer");
    let own = metadata::read(acme, "a3", "instance-id").await;
    assert_eq!(own.body, a3.id.to_string(), "a3 after the forgery");
    // The metadata address offers nothing else (the agent's API port, say).
    assert!(
        !answers_http(acme, "a1", "169.254.169.254", AGENT_PORT).await,
        "a1 reached port {AGENT_PORT} at 169.254.169.254"
    );
    eprintln!("metadata steps: {:.0} s", started.elapsed().as_secs_f64());
}
