//! Gateways and floating IPs on one host, with the agent's own code ([`HostNetwork::plug`],
//! [`HostNetwork::apply_firewall`]) and "guest" namespaces in place of the VMs' taps (a tap
//! without QEMU carries nothing), each with its network's gateway as default route:
//!
//! ```text
//!  root namespace 10.248.S.1 ── host 10.248.S.11: nb<A> ─ ga 10.40.0.10 (gw 10.40.0.1)
//!                                                 nb<B> ─ gb 10.41.0.10 (gw 10.41.0.1)
//! ```
//! ga reaches a server in the root namespace, masqueraded to the host's address; it reaches
//! neither B's router (whose address the host routes) nor a server of the host itself. A
//! floating IP on the root namespace's subnet reaches ga from the root namespace, with the
//! client's own address, and stops when the controller sends it no more; a connection
//! through it ends when the address moves to another guest. Each network's DNS
//! server answers its own names to its own guests only. Root only; no guest
//! boots, so this runs in seconds (the same with real guests: `crates/cli/tests/gateway.rs`).

mod netns;

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, RecordType};
use netns::{in_netns, Topology};
use nimbus_agent::network::router::transit_address;
use nimbus_agent::network::{tap, HostNetwork, Shell};
use nimbus_agent_api::{
    FirewallRule, FloatingNat, HostFirewall, NameRecord, NetworkConfig, NetworkNames, NicSpec,
    PortFirewall, Remote, VmSpec,
};
use nimbus_api::{Direction, Protocol};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

const VNI_A: u32 = 5100;
const VNI_B: u32 = 5101;

fn vm(vni: u32, ip: &str, gateway: &str, mac: &str) -> VmSpec {
    netns::vm_spec(vec![NicSpec {
        mac: mac.into(),
        ip: ip.into(),
        gateway: Some(gateway.into()),
        vni: Some(vni),
    }])
}

fn open_rule(direction: Direction) -> FirewallRule {
    FirewallRule {
        direction,
        protocol: Protocol::Any,
        port_min: None,
        port_max: None,
        remote: Remote::Cidr("0.0.0.0/0".into()),
    }
}

/// Both ports open both ways, and `floating` translated.
fn firewall(vms: &[(u32, &VmSpec)], floating: Vec<FloatingNat>) -> HostFirewall {
    HostFirewall {
        ports: vms
            .iter()
            .map(|(vni, spec)| PortFirewall {
                instance_id: spec.id,
                nic: 0,
                vni: *vni,
                rules: vec![open_rule(Direction::Ingress), open_rule(Direction::Egress)],
            })
            .collect(),
        groups: Vec::new(),
        floating,
        names: Vec::new(),
    }
}

/// A server on `addr` in namespace `ns` (`None`: here) that answers each of `conns`
/// connections with the address it came from.
fn serve(ns: Option<&str>, addr: SocketAddr, conns: usize) {
    let (tx, rx) = std::sync::mpsc::channel();
    let run = move || {
        let listener = TcpListener::bind(addr).expect("bind");
        tx.send(()).expect("ready");
        for conn in listener.incoming().take(conns) {
            let _ = conn.and_then(|mut c| {
                let peer = c.peer_addr()?.ip().to_string();
                c.write_all(peer.as_bytes())
            });
        }
    };
    match ns {
        Some(ns) => drop(in_netns(ns, run)),
        None => drop(std::thread::spawn(run)),
    }
    rx.recv_timeout(Duration::from_secs(5)).expect("server up");
}

/// What the server at `addr` says to a client in `ns` (`None`: here), if it is reached.
fn answer(ns: Option<&str>, addr: SocketAddr) -> Option<String> {
    let ask = move || {
        let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
        c.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut s = String::new();
        c.read_to_string(&mut s).ok()?;
        Some(s)
    };
    match ns {
        Some(ns) => in_netns(ns, ask).join().expect("client"),
        None => ask(),
    }
}

/// Whether `ip` answers a ping from `ns` (busybox's ping: scripts/install-deps.sh installs
/// busybox-static).
fn pings(ns: &str, ip: &str) -> bool {
    std::process::Command::new("ip")
        .args([
            "netns", "exec", ns, "busybox", "ping", "-c", "1", "-W", "1", ip,
        ])
        .output()
        .expect("ping")
        .status
        .success()
}

/// A server on `addr` in namespace `ns` that passes on each line of its first connection
/// (for 10 s at most).
fn serve_lines(ns: &str, addr: SocketAddr) -> std::sync::mpsc::Receiver<String> {
    let (up, is_up) = std::sync::mpsc::channel();
    let (tx, rx) = std::sync::mpsc::channel();
    drop(in_netns(ns, move || {
        let listener = TcpListener::bind(addr).expect("bind");
        up.send(()).expect("ready");
        let Ok((conn, _)) = listener.accept() else {
            return;
        };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
        for line in std::io::BufRead::lines(std::io::BufReader::new(conn)) {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    }));
    is_up
        .recv_timeout(Duration::from_secs(5))
        .expect("server up");
    rx
}

/// The DNS answer (response code and addresses) of the server at `server` to a query for the
/// A record of `name`, from `ns`; `None`: no answer within a second.
fn resolve(ns: &str, server: &str, name: &str) -> Option<(ResponseCode, Vec<Ipv4Addr>)> {
    let mut query = Message::query();
    query.add_query(Query::query(
        Name::from_ascii(name).expect("name"),
        RecordType::A,
    ));
    let bytes = query.to_vec().expect("encode");
    let server: SocketAddr = format!("{server}:53").parse().expect("server");
    let ask = move || {
        let sock = UdpSocket::bind("0.0.0.0:0").ok()?;
        sock.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
        sock.send_to(&bytes, server).ok()?;
        let mut buf = [0u8; 1500];
        let len = sock.recv(&mut buf).ok()?;
        let resp = Message::from_vec(&buf[..len]).ok()?;
        let ips = resp
            .answers
            .iter()
            .filter_map(|r| match r.data {
                RData::A(A(ip)) => Some(ip),
                _ => None,
            })
            .collect();
        Some((resp.metadata.response_code, ips))
    };
    in_netns(ns, ask).join().expect("client")
}

/// The DNS answer of `server` over TCP (length-prefixed) to a query of `kind` for `name`,
/// from `ns`; `None`: no answer within a second.
fn resolve_tcp(
    ns: &str,
    server: &str,
    name: &str,
    kind: RecordType,
) -> Option<(ResponseCode, usize)> {
    let mut query = Message::query();
    query.add_query(Query::query(Name::from_ascii(name).expect("name"), kind));
    let bytes = query.to_vec().expect("encode");
    let server: SocketAddr = format!("{server}:53").parse().expect("server");
    let ask = move || {
        let mut conn = TcpStream::connect_timeout(&server, Duration::from_secs(1)).ok()?;
        conn.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
        let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
        framed.extend(&bytes);
        conn.write_all(&framed).ok()?;
        let mut len = [0u8; 2];
        conn.read_exact(&mut len).ok()?;
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
        conn.read_exact(&mut buf).ok()?;
        let resp = Message::from_vec(&buf).ok()?;
        Some((resp.metadata.response_code, resp.answers.len()))
    };
    in_netns(ns, ask).join().expect("client")
}

/// How many of `count` UDP queries sent at once from `ns` get an answer.
fn flood(ns: &str, server: &str, count: usize) -> usize {
    let mut query = Message::query();
    query.add_query(Query::query(
        Name::from_ascii("web1").expect("name"),
        RecordType::A,
    ));
    let bytes = query.to_vec().expect("encode");
    let server: SocketAddr = format!("{server}:53").parse().expect("server");
    let send = move || {
        let sock = UdpSocket::bind("0.0.0.0:0").expect("bind");
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .expect("timeout");
        for _ in 0..count {
            let _ = sock.send_to(&bytes, server);
        }
        let mut buf = [0u8; 1500];
        (0..count)
            .take_while(|_| sock.recv(&mut buf).is_ok())
            .count()
    };
    in_netns(ns, send).join().expect("client")
}

/// Each network's DNS server (at its gateway) answers its own instances' names, by name and
/// in its domain; another network's names do not exist there; other names are refused; the
/// other network's server and the router's uplink side answer nothing.
async fn names_resolve_inside_their_network_only(
    host: &HostNetwork,
    t: &Topology,
    ga: &str,
    gb: &str,
    [va, vb]: [&VmSpec; 2],
) {
    let mut fw = firewall(&[(VNI_A, va), (VNI_B, vb)], Vec::new());
    let record = |name: &str, address: &str| NameRecord {
        name: name.into(),
        address: address.into(),
    };
    fw.names = vec![
        NetworkNames {
            vni: VNI_A,
            domain: "neta.internal".into(),
            records: vec![record("web1", "10.40.0.10"), record("web2", "10.40.0.11")],
        },
        NetworkNames {
            vni: VNI_B,
            domain: "netb.internal".into(),
            records: vec![record("db1", "10.41.0.10")],
        },
    ];
    host.apply_firewall(&fw).await.expect("names");
    let web1 = Ipv4Addr::new(10, 40, 0, 10);
    for name in ["web1", "web1.neta.internal"] {
        assert_eq!(
            resolve(ga, "10.40.0.1", name),
            Some((ResponseCode::NoError, vec![web1])),
            "{name} from ga"
        );
    }
    let web2 = resolve(ga, "10.40.0.1", "web2.neta.internal");
    assert_eq!(web2.map(|a| a.1), Some(vec![Ipv4Addr::new(10, 40, 0, 11)]));
    let db1 = resolve(gb, "10.41.0.1", "db1");
    assert_eq!(db1.map(|a| a.1), Some(vec![Ipv4Addr::new(10, 41, 0, 10)]));
    let other = resolve(ga, "10.40.0.1", "db1").map(|a| a.0);
    assert_eq!(other, Some(ResponseCode::NXDomain), "B's name in A");
    let outside = resolve(ga, "10.40.0.1", "db1.netb.internal").map(|a| a.0);
    assert_eq!(outside, Some(ResponseCode::Refused), "another domain");
    let outside = resolve(ga, "10.40.0.1", "example.com").map(|a| a.0);
    assert_eq!(outside, Some(ResponseCode::Refused), "not an open resolver");
    assert_eq!(resolve(ga, "10.41.0.1", "db1"), None, "ga reached B's DNS");
    let a_uplink = transit_address(VNI_A).expect("transit").to_string();
    assert_eq!(
        resolve(&t.host_ns(1), &a_uplink, "web1"),
        None,
        "the router's DNS answers on its uplink"
    );
    // An instance gone from the controller's names is gone from DNS at the next push.
    fw.names[0].records.remove(1);
    host.apply_firewall(&fw).await.expect("names");
    let gone = resolve(ga, "10.40.0.1", "web2").map(|a| a.0);
    assert_eq!(gone, Some(ResponseCode::NXDomain));

    // Over TCP the same answers; AAAA of a v4-only name: the name exists, with no data.
    let tcp = |name, kind| resolve_tcp(ga, "10.40.0.1", name, kind);
    assert_eq!(tcp("web1", RecordType::A), Some((ResponseCode::NoError, 1)));
    assert_eq!(
        tcp("web1.neta.internal", RecordType::AAAA),
        Some((ResponseCode::NoError, 0))
    );
    assert_eq!(
        resolve_tcp(&t.host_ns(1), &a_uplink, "web1", RecordType::A),
        None,
        "the router's DNS answers TCP on its uplink"
    );
    // A flood from one guest is cut at the rate limit's burst; the guest is answered again
    // once its bucket refills.
    let answered = flood(ga, "10.40.0.1", 1000);
    assert!(
        answered > 0 && answered < 1000,
        "{answered} of 1000 answered"
    );
    let again = (0..30).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        resolve(ga, "10.40.0.1", "web1").is_some()
    });
    assert!(again, "the guest is answered again after the flood");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_go_out_only_and_floating_ips_come_in() {
    if !netns::can_run("gateways_go_out_only_and_floating_ips_come_in") {
        return;
    }
    let mut t = Topology::create('w', 1, true).await;
    let host_ip = t.host_ip(1);
    let host = HostNetwork::new(Shell::in_netns(t.host_ns(1)), Some(host_ip));
    let config = NetworkConfig {
        vni: 4200,
        peers: Vec::new(),
        cidr: "10.200.0.0/16".into(),
    };
    host.apply(&config).await.expect("register");
    let va = vm(VNI_A, "10.40.0.10/24", "10.40.0.1", "52:54:0a:28:00:0a");
    let vb = vm(VNI_B, "10.41.0.10/24", "10.41.0.1", "52:54:0a:29:00:0a");
    for spec in [&va, &vb] {
        host.plug(spec, &mut netns::qemu_config())
            .await
            .expect("plug");
    }
    host.apply_firewall(&firewall(&[(VNI_A, &va), (VNI_B, &vb)], Vec::new()))
        .await
        .expect("firewall");
    let shell = Shell::in_netns(t.host_ns(1));
    let mut guests = Vec::new();
    for (name, spec, vni, gw) in [
        ("ga", &va, VNI_A, "10.40.0.1"),
        ("gb", &vb, VNI_B, "10.41.0.1"),
    ] {
        let tap = tap::tap_name(spec.id, 0);
        netns::run(&shell, &["link", "del", &tap]).await;
        let nic = &spec.nics[0];
        let bridge = format!("nb{vni}");
        let ns = t
            .add_guest_port(1, name, &tap, &bridge, &nic.ip, Some(&nic.mac))
            .await;
        netns::run(
            &Shell::in_netns(&ns),
            &["route", "add", "default", "via", gw],
        )
        .await;
        guests.push(ns);
    }
    let (ga, gb) = (guests[0].clone(), guests[1].clone());
    names_resolve_inside_their_network_only(&host, &t, &ga, &gb, [&va, &vb]).await;

    // Out: a server in the root namespace sees the host's address.
    let outside = SocketAddr::new(t.root_ip(), 4795);
    serve(None, outside, 2);
    assert_eq!(answer(Some(&ga), outside), Some(host_ip.to_string()));
    assert!(pings(&ga, "10.40.0.1"), "ga's gateway answers ping");
    // No path to the other network's router (the host routes its address), nor to a server
    // of the host itself, nor to the other guest.
    let b_router = transit_address(VNI_B).expect("transit").to_string();
    assert!(pings(&gb, &b_router), "gb reaches its own router");
    assert!(!pings(&ga, &b_router), "ga reached network B's router");
    let on_host = SocketAddr::new(host_ip, 4797);
    serve(Some(&t.host_ns(1)), on_host, 1);
    assert_eq!(answer(Some(&ga), on_host), None, "ga reached the host");
    let b_guest: SocketAddr = "10.41.0.10:4796".parse().expect("addr");
    serve(Some(&gb), b_guest, 1);
    assert_eq!(answer(Some(&ga), b_guest), None, "ga reached network B");

    // In: a floating IP on the root namespace's subnet reaches ga with the client's address.
    let IpAddr::V4(root) = t.root_ip() else {
        panic!("IPv4 topology")
    };
    let [a, b, c, _] = root.octets();
    let floating = std::net::Ipv4Addr::new(a, b, c, 200);
    let nat = FloatingNat {
        vni: VNI_A,
        floating: floating.to_string(),
        private: "10.40.0.10".into(),
    };
    let fw = firewall(&[(VNI_A, &va), (VNI_B, &vb)], vec![nat]);
    // As on a migration's target: sent before the VM resumes here, the floating IP is routed
    // but not claimed (no ARP answer, no announce) until it does.
    host.expect_arrival(&va).await;
    host.apply_firewall(&fw).await.expect("attach");
    let proxies = || async {
        let out = shell.ip(&["neigh", "show", "proxy"]).run().await;
        out.expect("ip neigh show proxy")
    };
    assert!(
        !proxies().await.contains(&floating.to_string()),
        "{floating} claimed before its VM arrived"
    );
    host.arrived(&va).await.expect("arrived");
    assert!(proxies().await.contains(&floating.to_string()));
    // As on a migration's source when the guest stops for the switch-over: no longer
    // claimed here (the announcement at the target's MAC needs a target: none here); and
    // claimed again when the guest resumes here (a switch-over that failed).
    host.handing_over(&va, None).await.expect("handing over");
    assert!(
        !proxies().await.contains(&floating.to_string()),
        "{floating} still claimed after its VM left"
    );
    host.resumed_here(&va).await.expect("resumed here");
    assert!(proxies().await.contains(&floating.to_string()));
    serve(Some(&ga), "10.40.0.10:4798".parse().expect("addr"), 2);
    let public = SocketAddr::new(floating.into(), 4798);
    assert_eq!(answer(None, public), Some(t.root_ip().to_string()));
    // ... and ga's own connections out now leave from it.
    let outside2 = SocketAddr::new(t.root_ip(), 4799);
    serve(None, outside2, 1);
    assert_eq!(answer(Some(&ga), outside2), Some(floating.to_string()));
    // The address moved to another guest of the network (the controller translates it to
    // 10.40.0.11 now): a connection the router tracked for ga carries nothing more to ga.
    let lines = serve_lines(&ga, "10.40.0.10:4801".parse().expect("addr"));
    let through = SocketAddr::new(floating.into(), 4801);
    let mut conn = TcpStream::connect_timeout(&through, Duration::from_secs(2)).expect("connect");
    conn.write_all(b"one\n").expect("send");
    let first = lines.recv_timeout(Duration::from_secs(2)).ok();
    assert_eq!(first.as_deref(), Some("one"));
    let moved = FloatingNat {
        vni: VNI_A,
        floating: floating.to_string(),
        private: "10.40.0.11".into(),
    };
    let vms = [(VNI_A, &va), (VNI_B, &vb)];
    host.apply_firewall(&firewall(&vms, vec![moved]))
        .await
        .expect("moved");
    conn.write_all(b"two\n").expect("send");
    assert!(
        lines.recv_timeout(Duration::from_secs(2)).is_err(),
        "ga still gets the traffic of {floating}, now another guest's"
    );
    drop(conn);
    host.apply_firewall(&fw).await.expect("back to ga");
    // A restarted agent (a new HostNetwork adopting the VMs) changes nothing that runs, also
    // before the controller sends it the floating IPs again.
    let host = HostNetwork::new(Shell::in_netns(t.host_ns(1)), Some(host_ip));
    for spec in [&va, &vb] {
        host.protect(spec).await.expect("adopt");
    }
    serve(Some(&ga), "10.40.0.10:4800".parse().expect("addr"), 1);
    let after_restart = SocketAddr::new(floating.into(), 4800);
    assert_eq!(answer(None, after_restart), Some(t.root_ip().to_string()));
    // Detached: nobody answers there any more.
    host.apply_firewall(&firewall(&[(VNI_A, &va), (VNI_B, &vb)], Vec::new()))
        .await
        .expect("detach");
    assert_eq!(
        answer(None, public),
        None,
        "{floating} answers after detach"
    );

    for spec in [&va, &vb] {
        host.unplug(spec).await.expect("unplug");
    }
    let left = std::fs::read_dir("/run/netns")
        .expect("netns dir")
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{}-r", t.host_ns(1)))
        })
        .count();
    assert_eq!(left, 0, "routers left after the last ports");
    drop(t);
}
