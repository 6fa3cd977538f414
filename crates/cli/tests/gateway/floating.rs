//! Floating-IP steps of the gateway test: reach a guest from the root namespace, across attach,
//! detach and a live migration.

use super::{addr, follow, metadata};
use nimbus_api::FloatingIpView;
use nimbus_client::Client;
use nimbus_test_utils::guest::*;
use nimbus_test_utils::Cloud;
use std::io::{BufRead, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

/// What a TCP server at `addr` says first (within 3 s), or `None` if it cannot be reached.
pub fn greeting(addr: SocketAddr) -> Option<String> {
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    let mut line = String::new();
    std::io::BufReader::new(&mut conn)
        .read_line(&mut line)
        .ok()?;
    Some(line.trim().to_string())
}

/// Waits (bounded: 20 tries) until `addr` answers `want` (`Some`) or cannot be reached
/// (`None`); answers whether it came to that.
pub async fn greeting_becomes(addr: SocketAddr, want: Option<&str>) -> bool {
    for _ in 0..20 {
        let got = tokio::task::spawn_blocking(move || greeting(addr))
            .await
            .expect("probe");
        if got.as_deref() == want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    false
}

/// Starts in guest `name` a server on `port` that greets every connection with `pong`.
pub async fn serve_pong(client: &Client, name: &str, port: u16) {
    let cmd =
        format!("(while true; do echo pong | nc -l -p {port}; done) </dev/null >/dev/null 2>&1 &");
    client.exec(name, &cmd).await.expect("start the server");
}

/// Starts in guest `name` a server on `port` that writes what its one connection sends to
/// `/tmp/got-<port>` (the connection stays open: its input never ends).
pub async fn serve_sink(client: &Client, name: &str, port: u16) {
    let cmd = format!(
        "(sleep 100000 </dev/null 2>/dev/null | nc -l -p {port} >/tmp/got-{port} 2>&1 &) \
         </dev/null >/dev/null 2>&1"
    );
    client.exec(name, &cmd).await.expect("start the sink");
}

/// What the sink on `port` of guest `name` received.
pub async fn received(client: &Client, name: &str, port: u16) -> String {
    let out = client
        .exec(name, &format!("cat /tmp/got-{port}"))
        .await
        .expect("exec");
    out.output
}

/// A connection from the root namespace to `addr` that stays open.
pub fn open(addr: SocketAddr) -> TcpStream {
    TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
}

/// Sends `line` on `conn`; a connection the network lost fails here or on the next write.
pub fn send(conn: &mut TcpStream, line: &str) {
    conn.write_all(format!("{line}\n").as_bytes())
        .unwrap_or_else(|e| panic!("send {line:?}: {e}"));
    conn.flush().expect("flush");
}

/// Opens in guest `from` a connection to `ip:port` whose lines come from the fifo
/// `/tmp/to-<port>`, and sends `line` on it.
pub async fn open_from_guest(client: &Client, from: &str, ip: &str, port: u16, line: &str) {
    let fifo = format!("/tmp/to-{port}");
    let cmd = format!(
        "mkfifo {fifo}; (sleep 100000 >{fifo} 2>/dev/null </dev/null &); \
         (nc {ip} {port} <{fifo} >/dev/null 2>&1 &) </dev/null >/dev/null 2>&1; \
         sleep 1; echo {line} >{fifo}"
    );
    client.exec(from, &cmd).await.expect("open from the guest");
}

/// Sends `line` on the connection [`open_from_guest`] opened in guest `from`.
pub async fn send_from_guest(client: &Client, from: &str, port: u16, line: &str) {
    let cmd = format!("echo {line} >/tmp/to-{port}");
    client.exec(from, &cmd).await.expect("send from the guest");
}

/// Whether host namespace `ns` still routes `addr` as a floating IP.
pub fn routes_floating(ns: &str, addr: Ipv4Addr) -> bool {
    let out = std::process::Command::new("ip")
        .args(["-n", ns, "-4", "route", "show", "proto", "77"])
        .output()
        .expect("ip");
    let mut text = String::new();
    let _ = out.stdout.as_slice().read_to_string(&mut text);
    text.lines().any(|l| l.starts_with(&format!("{addr} ")))
}

/// Floating IPs: acme's a1 reachable from the root namespace at its floating IP (across
/// detach, attach and a live migration), bad requests refused. Answers the address, still
/// attached to a1, and where a1's server answers through it.
pub async fn floating_ips(
    cloud: &Cloud,
    acme_token: &str,
    globex_token: &str,
    acme: &Client,
) -> (String, SocketAddr) {
    let ip: FloatingIpView = json(&cli_ok_as(
        cloud,
        acme_token,
        &["ip", "allocate", "-o", "json"],
    ));
    let fip: Ipv4Addr = ip.address.parse().expect("an IPv4 address");
    cli_ok_as(cloud, acme_token, &["ip", "attach", &ip.address, "a1"]);
    let shown = instance(acme, "a1").await;
    assert_eq!(shown.floating_ip.as_deref(), Some(ip.address.as_str()));
    let table = cli_ok_as(cloud, acme_token, &["instance", "show", "a1"]);
    assert!(table.contains(&ip.address), "{table}");
    // Open to the outside on two ports (the default group admits only its members).
    for port in ["8080", "9000"] {
        cli_ok_as(
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
                port,
                "--cidr",
                "0.0.0.0/0",
            ],
        );
    }
    serve_pong(acme, "a1", 8080).await;
    let pong = SocketAddr::from((fip, 8080));
    assert!(
        greeting_becomes(pong, Some("pong")).await,
        "a1 not reachable at {fip}"
    );
    // The same push from the controller gave the host the address for the metadata service.
    let public = metadata::read(acme, "a1", "public-ipv4").await;
    assert_eq!((public.status, public.body), (200, ip.address.clone()));

    // Bad requests: attached elsewhere, another project's address, release while attached,
    // over the quota.
    let err = cli_err_as(cloud, acme_token, &["ip", "attach", &ip.address, "a3"]);
    assert!(err.contains("attached to instance \"a1\""), "{err}");
    let err = cli_err_as(cloud, globex_token, &["ip", "attach", &ip.address, "g1"]);
    assert!(err.contains("not found"), "{err}");
    let err = cli_err_as(cloud, globex_token, &["ip", "release", &ip.address]);
    assert!(err.contains("not found"), "{err}");
    let err = cli_err_as(cloud, acme_token, &["ip", "release", &ip.address]);
    assert!(err.contains("detach it first"), "{err}");
    cli_ok(cloud, &["quota", "set", "globex", "--floating-ips", "0"]);
    let err = cli_err_as(cloud, globex_token, &["ip", "allocate"]);
    assert!(err.contains("floating_ips quota 0"), "{err}");

    // Detach: unreachable; attach again: reachable.
    cli_ok_as(cloud, acme_token, &["ip", "detach", &ip.address]);
    assert!(
        greeting_becomes(pong, None).await,
        "{fip} still answers after detach"
    );
    let listed: Vec<FloatingIpView> =
        json(&cli_ok_as(cloud, acme_token, &["ip", "list", "-o", "json"]));
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].instance, None);
    cli_ok_as(cloud, acme_token, &["ip", "attach", &ip.address, "a1"]);
    assert!(
        greeting_becomes(pong, Some("pong")).await,
        "{fip} not back after attach"
    );

    // Connections through the floating IP (from here) and the private IP (from a3) stay
    // open across a live migration of a1.
    let a1_ip = addr(&instance(acme, "a1").await);
    serve_sink(acme, "a1", 9000).await;
    serve_sink(acme, "a1", 9001).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut outside = open(SocketAddr::from((fip, 9000)));
    send(&mut outside, "before");
    open_from_guest(acme, "a3", &a1_ip, 9001, "before").await;
    let old_host = instance(acme, "a1").await.host.expect("placed");
    cli_ok(
        cloud,
        &["instance", "migrate", "a1", "--project", "acme", "--wait"],
    );
    let new_host = instance(acme, "a1").await.host.expect("placed");
    assert_ne!(new_host, old_host, "a1 moved");
    send(&mut outside, "after");
    send_from_guest(acme, "a3", 9001, "after").await;
    let mut both = false;
    for _ in 0..20 {
        let (f, p) = (
            received(acme, "a1", 9000).await,
            received(acme, "a1", 9001).await,
        );
        if f.contains("before\nafter") && p.contains("before\nafter") {
            both = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        both,
        "a connection broke across the migration: floating {:?}, private {:?}",
        received(acme, "a1", 9000).await,
        received(acme, "a1", 9001).await
    );
    assert!(
        greeting_becomes(pong, Some("pong")).await,
        "new connections after the move"
    );
    // The metadata followed a1 to its new host.
    for (key, want) in [
        ("instance-id", shown.id.to_string()),
        ("public-ipv4", ip.address.clone()),
    ] {
        let got = metadata::read(acme, "a1", key).await;
        assert_eq!((got.status, got.body), (200, want), "{key} on {new_host}");
    }
    // Nothing of a1 is left on its old host: no tap, no floating route.
    let old: usize = old_host.trim_start_matches("host").parse().expect("index");
    let old_ns = cloud.host_netns(old).expect("netns");
    let links = Command::new("ip")
        .args(["-n", &old_ns, "-o", "link"])
        .output()
        .expect("ip");
    let tap = format!("nt{}", &shown.id.simple().to_string()[..10]);
    assert!(
        !String::from_utf8_lossy(&links.stdout).contains(&tap),
        "{tap} left on {old_host}"
    );
    // The old host withdraws its route once it has deleted its copy of the VM, which the
    // operation's end does not wait for: bounded wait (the CLI's --wait now returns at once).
    let mut routed = routes_floating(&old_ns, fip);
    for _ in 0..50 {
        if !routed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        routed = routes_floating(&old_ns, fip);
    }
    assert!(
        !routed,
        "{fip} still routed on {old_host} 10 s after the migration"
    );
    drop(outside);
    let follow_started = Instant::now();
    follow::dhcp_renewal_keeps_the_address(acme, "a1", &a1_ip).await;
    let renewed = follow_started.elapsed().as_secs_f64();
    follow::floating_ip_survives_drain_and_restore(cloud, acme_token, acme, fip).await;
    eprintln!(
        "follow the VM: DHCP renewal {renewed:.1} s, drain and restore {:.0} s",
        follow_started.elapsed().as_secs_f64() - renewed
    );
    (ip.address, pong)
}
