//! A floating IP is claimed on the uplink (the host answers ARP for it, and announces it) by
//! the host its VM runs on, never by a live migration's target before the VM resumes there:
//! until then only the source's router reaches the guest. Also when the target's agent
//! restarts while its QEMU waits for the VM: the restarted agent asks QEMU over QMP whether
//! it still waits (`inmigrate`) instead of taking every VM it adopts as running here.
//!
//! A real agent in a host namespace ([`netns::agent`]), a stand-in controller, and two VMs of
//! one tenant network, each with a floating IP on the root namespace's subnet:
//! - `run`, started here (its QEMU runs; its guest need not have booted);
//! - `mig`, prepared for an incoming migration that never starts (its QEMU waits).
//!
//! The host answers ARP (a proxy entry on its uplink) for `run`'s address only, before and
//! after an agent restart, before and after the controller's next push. The restarted agent
//! cannot reach the controller: until it does, the host's egress protections in force (the
//! other hosts and the floating IPs held here, in `ip nimbus_egress`) stay as they were,
//! although the agent re-plugs its VMs' ports. Root and the built image only (skipped
//! otherwise).

mod common;
mod netns;

use common::{default_image, wait_for, QemuReaper};
use netns::agent::{stand_in_controller, HostAgent};
use netns::Topology;
use nimbus_agent::network::Shell;
use nimbus_agent_api::{
    DiskSpec, DiskTransfer, FirewallRule, FloatingNat, HostFirewall, IncomingRequest,
    MigrationPolicy, NetworkConfig, NicSpec, PortFirewall, Remote, VmRunState, VmSpec,
};
use nimbus_api::{Direction, Protocol};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;
use uuid::Uuid;

const TEST: &str = "a_waiting_target_claims_no_floating_ip_even_after_an_agent_restart";
const VNI: u32 = 5300;

fn vm(image: &nimbus_agent::ImageManifest, name: &str, last: u8) -> VmSpec {
    VmSpec {
        id: Uuid::new_v4(),
        name: name.into(),
        vcpus: 1,
        memory_mib: 128,
        image: image.guest_image(),
        disk: DiskSpec { size_gib: 1 },
        ha: false,
        seed: None,
        nics: vec![NicSpec {
            mac: format!("52:54:0a:32:00:{last:02x}"),
            ip: format!("10.50.0.{last}/24"),
            gateway: Some("10.50.0.1".into()),
            vni: Some(VNI),
        }],
    }
}

/// Both VMs' ports open, each with its floating IP, as the controller sends them.
fn firewall(vms: &[(&VmSpec, Ipv4Addr)]) -> HostFirewall {
    let open = |direction| FirewallRule {
        direction,
        protocol: Protocol::Any,
        port_min: None,
        port_max: None,
        remote: Remote::Cidr("0.0.0.0/0".into()),
    };
    HostFirewall {
        ports: vms
            .iter()
            .map(|(spec, _)| PortFirewall {
                instance_id: spec.id,
                nic: 0,
                vni: VNI,
                rules: vec![open(Direction::Ingress), open(Direction::Egress)],
            })
            .collect(),
        groups: Vec::new(),
        floating: vms
            .iter()
            .map(|(spec, floating)| FloatingNat {
                vni: VNI,
                floating: floating.to_string(),
                private: spec.nics[0].ip.split('/').next().expect("ip").into(),
            })
            .collect(),
        names: Vec::new(),
    }
}

/// The addresses host `ns` answers ARP for on its uplink (proxy entries).
async fn claimed(ns: &str) -> String {
    let out = Shell::in_netns(ns)
        .ip(&["neigh", "show", "proxy"])
        .run()
        .await;
    out.expect("ip neigh show proxy")
}

/// The addresses of set `set` of the host's egress table.
async fn egress_set(ns: &str, set: &str) -> String {
    let args = ["list", "set", "ip", "nimbus_egress", set];
    let out = Shell::in_netns(ns).nft(&args).run().await;
    out.expect("nft list set")
}

/// Waits (bounded) until the agent of `ns` registered (the flat network's VXLAN device).
async fn wait_registered(ns: &str) {
    for _ in 0..150 {
        let shown = Shell::in_netns(ns)
            .ip(&["link", "show", "nimbus-vx"])
            .output()
            .await;
        if shown.is_ok_and(|o| o.success) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("the agent did not register");
}

/// The floating IPs host `ns` routes to a router (claimed or not).
async fn routed(ns: &str) -> String {
    let args = ["-4", "route", "show", "proto", "77"];
    let out = Shell::in_netns(ns).ip(&args).run().await;
    out.expect("ip route show proto 77")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_target_claims_no_floating_ip_even_after_an_agent_restart() {
    if !netns::can_run(TEST) {
        return;
    }
    let Some(image) = default_image(TEST) else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let _reaper = QemuReaper(tmp.path().to_path_buf());
    let t = Topology::create('f', 1, true).await;
    // Another host of the pool (never there): its address is one the routers must not reach.
    let IpAddr::V4(root) = t.root_ip() else {
        panic!("IPv4 topology")
    };
    let [a, b, c, _] = root.octets();
    let other_host = Ipv4Addr::new(a, b, c, 99).to_string();
    let network = NetworkConfig {
        vni: 4200,
        peers: vec![t.host_ip(1).to_string(), other_host.clone()],
        cidr: "10.200.0.0/16".into(),
    };
    let controller = stand_in_controller(SocketAddr::new(t.root_ip(), 0), network).await;
    let dir = tmp.path().join("host1");
    let agent = HostAgent::start(&t, 1, dir.clone(), &controller);
    agent.wait_serving().await;
    let ns = t.host_ns(1);
    wait_registered(&ns).await;
    let (run_ip, mig_ip) = (Ipv4Addr::new(a, b, c, 200), Ipv4Addr::new(a, b, c, 201));

    let run = vm(&image, "run", 10);
    agent.client.define_vm(&run).await.expect("define run");
    agent.client.start_vm(run.id).await.expect("start run");
    let mig = vm(&image, "mig", 11);
    let req = IncomingRequest {
        spec: mig.clone(),
        disk: DiskTransfer::Mirror,
        policy: MigrationPolicy::default(),
        source_host: None,
        tls_credential: None,
        guest_ready: false,
    };
    agent
        .client
        .migration_incoming(&req)
        .await
        .expect("incoming");
    let waiting = |s: &nimbus_agent_api::VmStatus| s.state == VmRunState::Starting && s.incoming;
    let limit = Duration::from_secs(30);
    wait_for(&agent.client, mig.id, limit, "mig waiting", waiting).await;
    let fw = firewall(&[(&run, run_ip), (&mig, mig_ip)]);
    agent.client.set_firewall(&fw).await.expect("firewall");
    let (run_ip, mig_ip) = (run_ip.to_string(), mig_ip.to_string());
    assert!(routed(&ns).await.contains(&mig_ip), "{}", routed(&ns).await);
    assert!(
        claimed(&ns).await.contains(&run_ip),
        "{}",
        claimed(&ns).await
    );
    assert!(
        !claimed(&ns).await.contains(&mig_ip),
        "{mig_ip} claimed before its VM arrived"
    );

    let egress = |set| egress_set(&ns, set);
    assert!(
        egress("hosts").await.contains(&other_host),
        "{}",
        egress("hosts").await
    );
    for ip in [&run_ip, &mig_ip] {
        assert!(
            egress("floating").await.contains(ip.as_str()),
            "{}",
            egress("floating").await
        );
    }

    // The agent restarts while mig's QEMU waits, and cannot reach the controller: nothing
    // changes, not at the next push of rules either. (Every finding is listed before the
    // test fails.)
    let mig_pid = agent.client.vm(mig.id).await.expect("mig").pid;
    agent.shutdown().await;
    let unreachable = format!("http://{}:1", t.root_ip());
    let agent = HostAgent::start(&t, 1, dir, &unreachable);
    agent.wait_serving().await;
    let again = wait_for(&agent.client, mig.id, limit, "mig re-adopted", waiting).await;
    assert_eq!(again.pid, mig_pid, "mig's QEMU ran on");
    let mut wrong = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            wrong.push(what);
        }
    };
    check(
        !claimed(&ns).await.contains(&mig_ip),
        format!("{mig_ip} claimed when the agent adopted mig"),
    );
    let floating = egress("floating").await;
    for ip in [&run_ip, &mig_ip] {
        check(
            floating.contains(ip.as_str()),
            format!(
                "the restarted agent took {ip} from the floating IPs routers reach: {floating}"
            ),
        );
    }
    agent.client.set_firewall(&fw).await.expect("firewall");
    check(
        routed(&ns).await.contains(&mig_ip),
        format!("{mig_ip} not routed"),
    );
    let proxies = claimed(&ns).await;
    check(
        proxies.contains(&run_ip),
        format!("the running VM's {run_ip} not claimed after the restart: {proxies}"),
    );
    check(
        !proxies.contains(&mig_ip),
        format!("{mig_ip} claimed by the restarted agent while its VM runs on the source"),
    );
    let hosts = egress("hosts").await;
    check(
        hosts.contains(&other_host),
        format!("the restarted agent let the routers reach the other hosts: {hosts}"),
    );
    assert!(wrong.is_empty(), "after the restart:\n{}", wrong.join("\n"));

    for id in [run.id, mig.id] {
        agent.client.delete_vm(id).await.expect("delete");
    }
    assert!(!claimed(&ns).await.contains(&run_ip), "left after delete");
    agent.shutdown().await;
}
