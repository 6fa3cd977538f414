//! Security groups enforced by real nftables on a host namespace: two "VM ports" (veths named
//! like taps, on a bridge, with port security) and TCP between them with socat. A port opens
//! only after its rule, a group rule only to members, a failed apply keeps the old rules, and
//! a port without rules is closed. Needs root (namespaces, nftables).

mod netns;

use netns::Topology;
use nimbus_agent::network::port_security::{self, Port};
use nimbus_agent::network::segment::Segment;
use nimbus_agent::network::tap::tap_name;
use nimbus_agent::network::{bridge, secgroups, Shell, NIC_MTU};
use nimbus_agent_api::{FirewallRule, GroupMembers, HostFirewall, PortFirewall, Remote};
use nimbus_api::{Direction, Protocol};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;
use uuid::Uuid;

const VNI: u32 = 4201;
/// The two instances; their veths are named like their taps.
const A: Uuid = Uuid::from_u128(0x5a << 120);
const B: Uuid = Uuid::from_u128(0x5b << 120);

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A TCP server on `port` in namespace `ns` running `action` (socat) per connection.
fn serve(ns: &str, port: u16, action: &str) -> Server {
    let listen = format!("TCP-LISTEN:{port},reuseaddr,fork");
    let child = Command::new("ip")
        .args(["netns", "exec", ns, "socat", &listen, action])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("socat (installed by scripts/install-deps.sh)");
    std::thread::sleep(Duration::from_millis(300));
    Server(child)
}

/// One TCP connection from `ns` to `ip`:8081 kept open: lines written come back echoed.
struct Session {
    child: Server,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Session {
    fn open(ns: &str, ip: &str) -> Self {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, "socat", "-"])
            .arg(format!("TCP:{ip}:8081,connect-timeout=2"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child: Server(child),
            stdin,
            lines,
        }
    }

    /// Whether `text` comes back within two seconds.
    fn echoes(&mut self, text: &str) -> bool {
        if writeln!(self.stdin, "{text}").is_err() {
            return false;
        }
        self.lines
            .recv_timeout(Duration::from_secs(2))
            .ok()
            .as_deref()
            == Some(text)
    }
}

/// Whether a new TCP connection from `ns` to `ip`:8080 gets the answer.
fn reaches(ns: &str, ip: &str) -> bool {
    let out = Command::new("timeout")
        .args(["3", "ip", "netns", "exec", ns, "socat", "-T1", "-"])
        .arg(format!("TCP:{ip}:8080,connect-timeout=1"))
        .stdin(Stdio::null())
        .output()
        .expect("socat");
    String::from_utf8_lossy(&out.stdout).contains("ok")
}

fn rule(
    direction: Direction,
    protocol: Protocol,
    port: Option<u16>,
    remote: Remote,
) -> FirewallRule {
    FirewallRule {
        direction,
        protocol,
        port_min: port,
        port_max: port,
        remote,
    }
}

fn all_out() -> FirewallRule {
    rule(
        Direction::Egress,
        Protocol::Any,
        None,
        Remote::Cidr("0.0.0.0/0".into()),
    )
}

fn firewall(b_ingress: Vec<FirewallRule>, web: &[&str]) -> HostFirewall {
    HostFirewall {
        ports: vec![
            PortFirewall {
                instance_id: A,
                nic: 0,
                vni: VNI,
                rules: vec![all_out()],
            },
            PortFirewall {
                instance_id: B,
                nic: 0,
                vni: VNI,
                rules: [b_ingress, vec![all_out()]].concat(),
            },
        ],
        groups: vec![GroupMembers {
            vni: VNI,
            group: "web".into(),
            addresses: web.iter().map(|a| a.to_string()).collect(),
        }],
        floating: Vec::new(),
        names: Vec::new(),
    }
}

#[tokio::test]
async fn rules_open_ports_statefully_and_a_failed_apply_keeps_the_old_ones() {
    let mut t = Topology::create('s', 1, false).await;
    let host = Shell::in_netns(t.host_ns(1));
    bridge::ensure(&host, &Segment::tenant(VNI).bridge, NIC_MTU)
        .await
        .expect("bridge");
    let (mac_a, mac_b) = ("52:54:0a:4d:00:0b", "52:54:0a:4d:00:0c");
    let a = t
        .add_guest_port(
            1,
            "a",
            &tap_name(A, 0),
            &Segment::tenant(VNI).bridge,
            "10.77.0.11/24",
            Some(mac_a),
        )
        .await;
    let b = t
        .add_guest_port(
            1,
            "b",
            &tap_name(B, 0),
            &Segment::tenant(VNI).bridge,
            "10.77.0.12/24",
            Some(mac_b),
        )
        .await;
    let ports = [(A, mac_a, "10.77.0.11"), (B, mac_b, "10.77.0.12")].map(|(id, mac, ip)| Port {
        tap: tap_name(id, 0),
        mac: mac.into(),
        ip: ip.into(),
    });
    port_security::secure(&host, &ports)
        .await
        .expect("port security");
    let _server = serve(&b, 8080, "SYSTEM:echo ok");

    // No inbound rule on b: closed.
    let mut sg = secgroups::Installed::default();
    sg.apply(&host, &firewall(vec![], &[]))
        .await
        .expect("apply");
    assert!(!reaches(&a, "10.77.0.12"), "b has no inbound rule");
    // Its rule opens it.
    let tcp_8080 = |remote| rule(Direction::Ingress, Protocol::Tcp, Some(8080), remote);
    let open = firewall(vec![tcp_8080(Remote::Cidr("10.77.0.0/24".into()))], &[]);
    sg.apply(&host, &open).await.expect("apply");
    assert!(reaches(&a, "10.77.0.12"), "b allows 8080 from 10.77.0.0/24");

    // A batch nft refuses (a bad prefix sent to the agent) changes nothing and is reported.
    let list_cmd = host.nft(&["list", "table", "bridge", "nimbus"]);
    let listing = || list_cmd.run();
    let before = listing().await.expect("list");
    let sg_cmd = host.nft(&["list", "table", "inet", secgroups::SG_TABLE]);
    let sg_table = sg_cmd.run().await.expect("list");
    assert!(sg_table.contains("ct zone set iifname map"), "{sg_table}");
    let bad = firewall(vec![tcp_8080(Remote::Cidr("10.77.0.0/40".into()))], &[]);
    let err = sg.apply(&host, &bad).await;
    assert!(err.is_err(), "nft must refuse a /40");
    assert_eq!(listing().await.expect("list"), before, "the old rules stay");
    assert!(
        reaches(&a, "10.77.0.12"),
        "still open after the failed apply"
    );
    // A restarted agent (which knows nothing of what is in force) rebuilds the same rules.
    let mut restarted = secgroups::Installed::default();
    restarted.apply(&host, &open).await.expect("apply");
    assert!(reaches(&a, "10.77.0.12"), "still open after a rebuild");

    // Stateful, as EC2: removing the rule refuses new connections at once, a tracked one
    // goes on.
    let _echo = serve(&b, 8081, "EXEC:cat");
    let echo_rule = || {
        rule(
            Direction::Ingress,
            Protocol::Tcp,
            Some(8081),
            Remote::Cidr("10.77.0.11/32".into()),
        )
    };
    let with_echo = firewall(
        vec![tcp_8080(Remote::Cidr("10.77.0.0/24".into())), echo_rule()],
        &[],
    );
    sg.apply(&host, &with_echo).await.expect("apply");
    let mut session = Session::open(&a, "10.77.0.12");
    assert!(
        session.echoes("before"),
        "the echo rule lets the connection in"
    );
    sg.apply(&host, &open).await.expect("apply");
    assert!(
        session.echoes("after"),
        "a tracked connection outlives its rule"
    );
    assert!(
        !Session::open(&a, "10.77.0.12").echoes("new"),
        "a new one is refused"
    );
    drop(session.child);

    // A group rule: open to members only.
    let by_group =
        |members: &[&str]| firewall(vec![tcp_8080(Remote::Group("web".into()))], members);
    sg.apply(&host, &by_group(&["10.77.0.11"]))
        .await
        .expect("apply");
    assert!(reaches(&a, "10.77.0.12"), "a is in web");
    sg.apply(&host, &by_group(&["10.77.0.99"]))
        .await
        .expect("apply");
    assert!(!reaches(&a, "10.77.0.12"), "a left web");

    // A port the controller sent no rules for is closed (fail closed), both ways.
    sg.apply(&host, &HostFirewall::default())
        .await
        .expect("apply");
    assert!(!reaches(&a, "10.77.0.12"), "no rules: nothing passes");
    let sg_table = sg_cmd.run().await.expect("list");
    assert!(!sg_table.contains("sg_ingress_nt"), "{sg_table}");
    let tags = listing().await.expect("list");
    assert!(
        !tags.contains(&format!("sg_ti_{}", tap_name(B, 0))),
        "{tags}"
    );
    assert!(!tags.contains("jump sg_t"), "no tag entries left: {tags}");
    drop(t);
}
