//! Tenant networks on two hosts: the agent's own code ([`HostNetwork::plug`]) makes a bridge
//! and a VXLAN device per network (VNI) on each host that gets a port of it; "guest"
//! namespaces on those bridges (a tap without QEMU carries nothing) use the SAME addresses in
//! both networks, as two projects may:
//!
//! ```text
//!  host 1: nb<A> ─ ga1 10.30.0.1     nb<B> ─ gb1 10.30.0.2
//!  host 2: nb<A> ─ ga2 10.30.0.2     nb<B> ─ gb2 10.30.0.1
//! ```
//! TCP to 10.30.0.2 from ga1 must reach ga2 (across hosts, its own network), never gb1 (same
//! host, same address, other network); a broadcast of network A reaches only A's guests;
//! the segment of a network goes when its last port leaves a host.
//!
//! Port security: each guest's host-side veth carries its VM's tap name (the tap is replaced
//! by it), so the VM's nftables rules apply: a guest that takes another IP or MAC reaches
//! nobody, a guest cannot act as a DHCP server, and a port without rules sends nothing.
//! Root only.

mod netns;

use netns::{in_netns, Topology};
use nimbus_agent::network::segment::Segment;
use nimbus_agent::network::{link, tap, HostNetwork, Shell};
use nimbus_agent_api::{NetworkConfig, NicSpec, VmSpec};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

fn vm(vni: u32, ip: &str, mac: &str) -> VmSpec {
    netns::vm_spec(vec![NicSpec {
        mac: mac.into(),
        ip: ip.into(),
        gateway: None,
        vni: Some(vni),
    }])
}

/// A TCP server in `ns` on 10.30.0.x:4792 that answers each connection with `who`, until
/// `conns` connections were served.
fn serve(ns: &str, addr: &'static str, who: &'static str, conns: usize) {
    let (tx, rx) = std::sync::mpsc::channel();
    in_netns(ns, move || {
        let listener = TcpListener::bind(addr).expect("bind");
        tx.send(()).expect("ready");
        for conn in listener.incoming().take(conns) {
            let _ = conn.and_then(|mut c| c.write_all(who.as_bytes()));
        }
    });
    rx.recv_timeout(Duration::from_secs(5)).expect("server up");
}

/// Who answers at `addr` from `ns` (`None`: nobody within the timeout).
fn who_answers(ns: &str, addr: &str) -> Option<String> {
    let addr: SocketAddr = addr.parse().expect("addr");
    in_netns(ns, move || {
        let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).ok()?;
        c.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
        let mut s = String::new();
        c.read_to_string(&mut s).ok()?;
        Some(s)
    })
    .join()
    .expect("client")
}

/// Listens for UDP on port 4793 in `ns` for up to 3 s; whether anything arrived.
fn hears_broadcast(ns: &str) -> std::thread::JoinHandle<bool> {
    in_netns(ns, || {
        let sock = UdpSocket::bind("0.0.0.0:4793").expect("bind udp");
        sock.set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        let mut buf = [0u8; 64];
        sock.recv_from(&mut buf).is_ok()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_networks_are_isolated_on_and_across_hosts() {
    if !netns::can_run("tenant_networks_are_isolated_on_and_across_hosts") {
        return;
    }
    let mut t = Topology::create('t', 2, false).await;
    let (a_ip, b_ip) = (t.host_ip(1), t.host_ip(2));
    let h1 = HostNetwork::new(Shell::in_netns(t.host_ns(1)), Some(a_ip));
    let h2 = HostNetwork::new(Shell::in_netns(t.host_ns(2)), Some(b_ip));
    let flat = |peer: std::net::IpAddr| NetworkConfig {
        vni: 4200,
        peers: vec![peer.to_string()],
        cidr: "10.200.0.0/16".into(),
    };
    h1.apply(&flat(b_ip)).await.expect("register host 1");
    h2.apply(&flat(a_ip)).await.expect("register host 2");

    let (vni_a, vni_b) = (5000, 5001);
    let (seg_a, seg_b) = (Segment::tenant(vni_a), Segment::tenant(vni_b));
    let vms = [
        (&h1, vm(vni_a, "10.30.0.1/24", "52:54:0a:1e:a1:01")),
        (&h1, vm(vni_b, "10.30.0.2/24", "52:54:0a:1e:b1:02")),
        (&h2, vm(vni_a, "10.30.0.2/24", "52:54:0a:1e:a2:02")),
        (&h2, vm(vni_b, "10.30.0.1/24", "52:54:0a:1e:b2:01")),
    ];
    for (host, spec) in &vms {
        host.plug(spec, &mut netns::qemu_config())
            .await
            .expect("plug");
    }
    let shell1 = Shell::in_netns(t.host_ns(1));
    for seg in [&seg_a, &seg_b] {
        let vx = link::show(&shell1, &seg.vxlan)
            .await
            .expect("show")
            .expect("VXLAN device of the network");
        assert_eq!(vx.master.as_deref(), Some(seg.bridge.as_str()));
        assert_eq!(vx.vxlan.expect("vxlan info").vni, seg.vni);
    }

    // Each VM's tap becomes a veth to a guest namespace with the VM's MAC and address.
    let shell2 = Shell::in_netns(t.host_ns(2));
    let mut guests = Vec::new();
    for ((host, spec), (name, i, seg)) in vms.iter().zip([
        ("a1", 1, &seg_a),
        ("b1", 1, &seg_b),
        ("a2", 2, &seg_a),
        ("b2", 2, &seg_b),
    ]) {
        let _ = host;
        let tap = tap::tap_name(spec.id, 0);
        let shell = if i == 1 { &shell1 } else { &shell2 };
        link_del(shell, &tap).await;
        let nic = &spec.nics[0];
        guests.push(
            t.add_guest_port(i, name, &tap, &seg.bridge, &nic.ip, Some(&nic.mac))
                .await,
        );
    }
    let [ga1, gb1, ga2, gb2] = [0, 1, 2, 3].map(|i| guests[i].clone());

    // Same address in both networks: each reaches its own network's guest only.
    serve(&ga2, "10.30.0.2:4792", "a2", 1);
    serve(&gb1, "10.30.0.2:4792", "b1", 1);
    let (c1, c2) = (ga1.clone(), gb2.clone());
    let answers = tokio::task::spawn_blocking(move || {
        (
            who_answers(&c1, "10.30.0.2:4792"),
            who_answers(&c2, "10.30.0.2:4792"),
        )
    })
    .await
    .expect("clients");
    assert_eq!(answers.0.as_deref(), Some("a2"), "network A, across hosts");
    assert_eq!(answers.1.as_deref(), Some("b1"), "network B, across hosts");

    // A broadcast of network A reaches A's other guest, and no guest of B.
    let listeners = [(&ga2, true), (&gb1, false), (&gb2, false)]
        .map(|(ns, expected)| (ns.clone(), hears_broadcast(ns), expected));
    tokio::time::sleep(Duration::from_millis(300)).await;
    in_netns(&ga1, || {
        let sock = UdpSocket::bind("10.30.0.1:0").expect("bind");
        sock.set_broadcast(true).expect("broadcast");
        for _ in 0..5 {
            let _ = sock.send_to(b"hello", "10.30.0.255:4793");
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .join()
    .expect("sender");
    for (ns, heard, expected) in listeners {
        let heard = tokio::task::spawn_blocking(move || heard.join().expect("listener"))
            .await
            .expect("join");
        assert_eq!(heard, expected, "broadcast of network A heard in {ns}");
    }

    // Spoofing: another IP, then another MAC, reaches nobody; its own again works.
    serve(&ga2, "10.30.0.2:4792", "a2", 1);
    let spoof = |args: &'static [&'static str]| {
        let ns = ga1.clone();
        async move { netns::run(&Shell::in_netns(ns), args).await }
    };
    spoof(&["addr", "flush", "dev", "eth0"]).await;
    spoof(&["addr", "add", "10.30.0.3/24", "dev", "eth0"]).await;
    assert_eq!(
        ask(&ga1).await,
        None,
        "a guest with a stolen IP got through"
    );
    spoof(&["addr", "flush", "dev", "eth0"]).await;
    spoof(&["addr", "add", "10.30.0.1/24", "dev", "eth0"]).await;
    spoof(&["link", "set", "eth0", "address", "52:54:0a:1e:ff:ff"]).await;
    assert_eq!(
        ask(&ga1).await,
        None,
        "a guest with a stolen MAC got through"
    );
    spoof(&["link", "set", "eth0", "address", "52:54:0a:1e:a1:01"]).await;
    assert_eq!(
        ask(&ga1).await.as_deref(),
        Some("a2"),
        "its own addresses again"
    );

    // A DHCP server in a guest is heard by nobody; the same datagram from another port is.
    assert!(!udp_heard(&ga1, &ga2, 67).await, "a guest answered DHCP");
    assert!(udp_heard(&ga1, &ga2, 5000).await, "control datagram lost");

    // A port without its rules (a tap nimbus did not secure) sends nothing.
    let rogue = tap::tap_name(uuid::Uuid::new_v4(), 0);
    let gz = t
        .add_guest_port(1, "z1", &rogue, &seg_a.bridge, "10.30.0.9/24", None)
        .await;
    assert_eq!(ask(&gz).await, None, "an unsecured port got through");

    // Network A leaves host 1 with its last port; network B stays for its VM; the port's
    // rules go with it.
    link_del(&shell1, &rogue).await;
    let tap_a1 = tap::tap_name(vms[0].1.id, 0);
    h1.unplug(&vms[0].1).await.expect("unplug");
    let chains = shell1
        .nft(&["list", "chains", "bridge"])
        .run()
        .await
        .expect("nft");
    assert!(!chains.contains(&format!("port_{tap_a1}")), "{chains}");
    assert!(
        chains.contains(&format!("port_{}", tap::tap_name(vms[1].1.id, 0))),
        "{chains}"
    );
    assert!(link::show(&shell1, &seg_a.bridge)
        .await
        .expect("show")
        .is_none());
    assert!(link::show(&shell1, &seg_a.vxlan)
        .await
        .expect("show")
        .is_none());
    assert!(link::show(&shell1, &seg_b.bridge)
        .await
        .expect("show")
        .is_some());
}

/// Who answers TCP at 10.30.0.2:4792 from `ns`.
async fn ask(ns: &str) -> Option<String> {
    let ns = ns.to_string();
    tokio::task::spawn_blocking(move || who_answers(&ns, "10.30.0.2:4792"))
        .await
        .expect("client")
}

/// Whether a broadcast datagram from `from` (source port `sport`, to port 68) reaches `to`.
async fn udp_heard(from: &str, to: &str, sport: u16) -> bool {
    let listener = in_netns(to, || {
        let sock = UdpSocket::bind("0.0.0.0:68").expect("bind 68");
        sock.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let mut buf = [0u8; 64];
        sock.recv_from(&mut buf).is_ok()
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    in_netns(from, move || {
        let sock = UdpSocket::bind(("10.30.0.1", sport)).expect("bind");
        sock.set_broadcast(true).expect("broadcast");
        for _ in 0..5 {
            let _ = sock.send_to(b"offer", "255.255.255.255:68");
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .join()
    .expect("sender");
    tokio::task::spawn_blocking(move || listener.join().expect("listener"))
        .await
        .expect("join")
}

async fn link_del(shell: &Shell, name: &str) {
    netns::run(shell, &["link", "del", name]).await;
}
