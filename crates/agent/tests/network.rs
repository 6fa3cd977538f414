//! Host networking across two hosts on one machine ([`netns::Topology`], built like
//! `nimbus up` builds them). The agent's own setup code ([`HostNetwork`], pointed at each
//! host's namespace with [`Shell::in_netns`]) makes the bridge, the VXLAN device and its
//! peers in each host; a "guest" namespace hangs off each host's bridge by a veth (a tap
//! without QEMU carries nothing), and TCP crosses the VXLAN:
//!
//! ```text
//!  netns <p>-h1: eth0 10.248.X.11, nimbus0 ── veth ── netns <p>-g1: eth0 10.201.0.1/16
//!     ║ VXLAN over the root bridge
//!  netns <p>-h2: eth0 10.248.X.12, nimbus0 ── veth ── netns <p>-g2: eth0 10.201.0.2/16
//! ```
//! Root only (skipped otherwise); every namespace and link is deleted at the end.

mod netns;

use netns::{in_netns, Topology};
use nimbus_agent::network::{bridge, link, tap, vxlan, HostNetwork, Shell, NIC_MTU};
use nimbus_agent_api::{DiskSpec, GuestImage, NetworkConfig, NicSpec, VmSpec};
use nimbus_qemu::config::MachineSection;
use nimbus_qemu::{Accel, QemuConfig, VmPaths};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

/// Sends `len` bytes from guest 1 to a server in guest 2 over TCP and returns what the
/// server counted: full-size segments only pass if every MTU on the path agrees.
fn transfer(client_ns: &str, server_ns: &str, len: usize) -> usize {
    let server_addr: SocketAddr = "10.201.0.2:4790".parse().expect("addr");
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = in_netns(server_ns, move || {
        let listener = TcpListener::bind(server_addr).expect("bind");
        ready_tx.send(()).expect("ready");
        let (mut conn, _) = listener.accept().expect("accept");
        conn.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut buf = Vec::new();
        conn.read_to_end(&mut buf).expect("read");
        conn.write_all(&(buf.len() as u64).to_be_bytes())
            .expect("reply");
        buf.len()
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("server ready");
    let client = in_netns(client_ns, move || {
        let mut conn =
            TcpStream::connect_timeout(&server_addr, Duration::from_secs(10)).expect("connect");
        conn.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        conn.write_all(&data).expect("send");
        conn.shutdown(std::net::Shutdown::Write).expect("shutdown");
        let mut reply = [0u8; 8];
        conn.read_exact(&mut reply).expect("reply");
        u64::from_be_bytes(reply) as usize
    });
    let counted = client.join().expect("client");
    assert_eq!(server.join().expect("server"), counted);
    counted
}

fn vm_with_nic(id: uuid::Uuid) -> VmSpec {
    VmSpec {
        id,
        name: "net-test".into(),
        vcpus: 1,
        memory_mib: 64,
        image: GuestImage {
            name: "none".into(),
            kernel: None,
            initrd: None,
            cmdline: None,
            base_disk: None,
            blob: None,
            ready_marker: None,
        },
        disk: DiskSpec { size_gib: 1 },
        seed: None,
        nics: vec![NicSpec {
            mac: "52:54:0a:c8:00:0a".into(),
            ip: "10.200.0.10/16".into(),
            gateway: None,
        }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_reach_each_other_over_vxlan() {
    if !netns::can_run("two_hosts_reach_each_other_over_vxlan") {
        return;
    }
    let mut t = Topology::create('n', 2, false).await;
    let (a, b) = (t.host_ip(1), t.host_ip(2));
    let net1 = HostNetwork::new(Shell::in_netns(t.host_ns(1)), Some(a));
    let net2 = HostNetwork::new(Shell::in_netns(t.host_ns(2)), Some(b));
    let vni = 4000 + u32::from(t.subnet);
    let config = |peers: Vec<String>| NetworkConfig {
        vni,
        peers,
        cidr: "10.201.0.0/16".into(),
    };
    let gone: IpAddr = IpAddr::from([10, 248, t.subnet, 99]);

    // Host 1 first learns of host 2 and of a host that will go away; itself is ignored.
    let first = net1
        .apply(&config(vec![
            b.to_string(),
            a.to_string(),
            gone.to_string(),
        ]))
        .await
        .expect("apply on host 1");
    assert!(first.bridge_created && first.vxlan_created);
    assert_eq!(first.peers.added, vec![b, gone]);
    // Idempotent: nothing to do the second time.
    let again = net1
        .apply(&config(vec![
            b.to_string(),
            a.to_string(),
            gone.to_string(),
        ]))
        .await
        .expect("apply again");
    assert_eq!(again, Default::default());
    // A peer that left is removed.
    let later = net1
        .apply(&config(vec![b.to_string()]))
        .await
        .expect("apply later");
    assert_eq!(later.peers.removed, vec![gone]);
    net2.apply(&config(vec![a.to_string()]))
        .await
        .expect("apply on host 2");

    // What the kernel has on host 1.
    let h1 = Shell::in_netns(t.host_ns(1));
    let vx = link::show(&h1, vxlan::VXLAN)
        .await
        .expect("show")
        .expect("VXLAN device exists");
    assert_eq!(vx.master.as_deref(), Some(bridge::BRIDGE));
    assert_eq!(vx.mtu, u32::from(NIC_MTU));
    assert!(vx.up);
    let info = vx.vxlan.expect("VXLAN parameters");
    assert_eq!((info.vni, info.local, info.port), (vni, Some(a), 4789));

    // Two "guests", one behind each host's bridge, talk across the VXLAN with full frames.
    t.add_guest(1, "10.201.0.1/16").await;
    t.add_guest(2, "10.201.0.2/16").await;
    let len = 4 << 20;
    let (g1, g2) = (t.guest_ns(1), t.guest_ns(2));
    let counted = tokio::task::spawn_blocking(move || transfer(&g1, &g2, len))
        .await
        .expect("transfer");
    assert_eq!(counted, len);

    // A VM's NIC: its tap on the bridge, its device in the QEMU configuration; unplug
    // removes the tap (twice is fine).
    let id = uuid::Uuid::new_v4();
    let spec = vm_with_nic(id);
    let machine = MachineSection {
        name: "net-test".into(),
        accel: Accel::Tcg,
        vcpus: 1,
        memory_mib: 64,
    };
    for _ in 0..2 {
        let mut qemu = QemuConfig::standard(machine.clone(), &VmPaths::new("/nonexistent"));
        net1.plug(&spec, &mut qemu).await.expect("plug");
        assert_eq!(qemu.nics.len(), 1);
    }
    let name = tap::tap_name(id, 0);
    let tap_link = link::show(&h1, &name)
        .await
        .expect("show")
        .expect("tap exists");
    assert_eq!(tap_link.master.as_deref(), Some(bridge::BRIDGE));
    assert_eq!(tap_link.mtu, u32::from(NIC_MTU));
    net1.unplug(&spec).await.expect("unplug");
    net1.unplug(&spec).await.expect("unplug again");
    assert!(link::show(&h1, &name).await.expect("show").is_none());

    // A new VNI re-creates the device, with its peers.
    let changed = net1
        .apply(&NetworkConfig {
            vni: vni + 1,
            ..config(vec![b.to_string()])
        })
        .await
        .expect("new VNI");
    assert!(changed.vxlan_created && !changed.bridge_created);
    assert_eq!(changed.peers.added, vec![b]);
}
