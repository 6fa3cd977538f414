//! End to end with the default guest image on two hosts: a real agent per host namespace
//! ([`netns::Topology`]), registering with a stand-in controller that answers with the cloud
//! network, and a VM with a NIC on each host. Checks that QEMU (sandboxed) opens the tap,
//! that the guest has its MAC, the 1450 MTU and `nimbus.ip=` on its command line, that the
//! two guests ping each other across the VXLAN with full-size frames, and that deleting
//! the VMs removes their taps.
//!
//! The guests' addresses are set through the exec channel when the guest does not apply
//! `nimbus.ip=` itself, so this test does not depend on that guest feature.
//! Root and the built image only (skipped otherwise).

mod common;
mod netns;

use common::{wait_for, QemuReaper};
use netns::agent::{stand_in_controller, HostAgent};
use netns::Topology;
use nimbus_agent::network::{link, tap, vxlan, Shell};
use nimbus_agent::ImageManifest;
use nimbus_agent_api::{AgentClient, DiskSpec, ExecRequest, NetworkConfig, NicSpec, VmSpec};
use std::net::SocketAddr;
use std::time::Duration;
use uuid::Uuid;

const BOOT_LIMIT: Duration = Duration::from_secs(120);

async fn exec(c: &AgentClient, id: Uuid, command: &str) -> (i32, String) {
    let req = ExecRequest {
        command: command.into(),
        timeout_secs: 30,
    };
    let r = c.exec(id, &req).await.expect("exec");
    (r.exit_code, r.output)
}

async fn wait_for_vxlan(shell: &Shell) {
    for _ in 0..150 {
        if link::show(shell, vxlan::VXLAN)
            .await
            .expect("show")
            .is_some()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("the agent did not set up the VXLAN device after registering");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guests_on_two_hosts_ping_each_other() {
    if !netns::can_run("guests_on_two_hosts_ping_each_other") {
        return;
    }
    let image_dir = ImageManifest::default_dir();
    if !image_dir.join("image.json").is_file() {
        eprintln!("SKIPPED guests_on_two_hosts_ping_each_other: no guest image (guest/build.sh)");
        return;
    }
    let manifest = ImageManifest::load(&image_dir).expect("image manifest");
    let tmp = tempfile::tempdir().expect("tempdir");
    let _reaper = QemuReaper(tmp.path().to_path_buf());
    let t = Topology::create('e', 2, true).await;
    let network = NetworkConfig {
        vni: 5000 + u32::from(t.subnet),
        peers: vec![t.host_ip(1).to_string(), t.host_ip(2).to_string()],
        cidr: "10.201.0.0/16".into(),
    };
    let controller = stand_in_controller(SocketAddr::new(t.root_ip(), 0), network).await;
    let agents: Vec<HostAgent> = (1..=2)
        .map(|i| HostAgent::start(&t, i, tmp.path().join(format!("host{i}")), &controller))
        .collect();
    for i in 1..=2 {
        wait_for_vxlan(&Shell::in_netns(t.host_ns(i))).await;
    }

    // One VM with a NIC per host.
    let mut vms = Vec::new();
    for (i, agent) in (1u8..).zip(&agents) {
        let id = Uuid::new_v4();
        let spec = VmSpec {
            id,
            name: format!("net{i}"),
            vcpus: 1,
            memory_mib: 256,
            image: manifest.guest_image(),
            disk: DiskSpec { size_gib: 1 },
            ha: false,
            seed: None,
            nics: vec![NicSpec {
                mac: format!("52:54:00:c9:00:0{i}"),
                ip: format!("10.201.0.{i}/16"),
                gateway: Some("10.201.0.254".into()),
                vni: None,
            }],
        };
        agent.client.define_vm(&spec).await.expect("define");
        agent.client.start_vm(id).await.expect("start");
        vms.push(spec);
    }
    let booting = std::time::Instant::now();
    for (agent, spec) in agents.iter().zip(&vms) {
        wait_for(&agent.client, spec.id, BOOT_LIMIT, "guest ready", |s| {
            s.guest_ready
        })
        .await;
    }
    eprintln!(
        "both guests ready {:?} after their start",
        booting.elapsed()
    );

    // What each guest sees: its MAC, the overlay's MTU, its address on the command line.
    for (agent, spec) in agents.iter().zip(&vms) {
        let c = &agent.client;
        let nic = &spec.nics[0];
        let (_, mac) = exec(c, spec.id, "cat /sys/class/net/eth0/address").await;
        assert_eq!(mac.trim(), nic.mac);
        let (_, mtu) = exec(c, spec.id, "cat /sys/class/net/eth0/mtu").await;
        assert_eq!(mtu.trim(), "1450");
        let (_, cmdline) = exec(c, spec.id, "cat /proc/cmdline").await;
        assert!(
            cmdline.contains(&format!("nimbus.ip={} nimbus.gw=10.201.0.254", nic.ip)),
            "{cmdline}"
        );
        let addr = &nic.ip;
        let set = format!(
            "ip link set eth0 up; ip -4 addr show dev eth0 | grep -q 'inet {addr}' \
             || ip addr add {addr} dev eth0"
        );
        assert_eq!(exec(c, spec.id, &set).await.0, 0);
    }

    // Guest 1 reaches guest 2 across the VXLAN, also with full 1450-byte packets.
    let c1 = &agents[0].client;
    let (code, out) = exec(
        c1,
        vms[0].id,
        "for i in 1 2 3 4 5 6 7 8 9 10; do ping -c 1 -W 2 10.201.0.2 >/dev/null && break; done; \
         ping -c 3 -W 5 10.201.0.2 && ping -c 2 -W 5 -s 1422 10.201.0.2",
    )
    .await;
    assert_eq!(code, 0, "ping failed:\n{out}");

    // Delete removes the taps.
    for (i, (agent, spec)) in (1u8..).zip(agents.iter().zip(&vms)) {
        let shell = Shell::in_netns(t.host_ns(i));
        let name = tap::tap_name(spec.id, 0);
        assert!(link::show(&shell, &name).await.expect("show").is_some());
        agent.client.delete_vm(spec.id).await.expect("delete");
        assert!(link::show(&shell, &name).await.expect("show").is_none());
    }
    for agent in agents {
        agent.shutdown().await;
    }
}
