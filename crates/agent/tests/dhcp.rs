//! DHCP on the VM's host: a VM's port (its tap replaced by a veth to a "guest" namespace with
//! the VM's MAC) asks with busybox `udhcpc`, as the default image would, and gets the lease
//! the VM spec decided, with its prefix and gateway, through the VM's port security. Root
//! only.

mod netns;

use netns::Topology;
use nimbus_agent::network::segment::Segment;
use nimbus_agent::network::{tap, HostNetwork, Shell};
use nimbus_agent_api::{NicSpec, VmSpec};
use std::time::{Duration, Instant};

fn vm() -> VmSpec {
    netns::vm_spec(vec![NicSpec {
        mac: "52:54:0a:28:00:0a".into(),
        ip: "10.40.0.10/24".into(),
        gateway: Some("10.40.0.1".into()),
        vni: Some(5200),
    }])
}

/// Runs `udhcpc` once in `ns`; answers what its script saw at `bound` (or its error).
fn udhcpc(ns: &str, script: &std::path::Path) -> String {
    let out = std::process::Command::new("ip")
        .args([
            "netns", "exec", ns, "busybox", "udhcpc", "-i", "eth0", "-f", "-q", "-n",
        ])
        .args(["-t", "3", "-T", "1", "-s"])
        .arg(script)
        .output()
        .expect("run udhcpc (busybox-static is installed by scripts/install-deps.sh)");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A VM's port plugged by the agent's own code on host 1 of `t`, its tap replaced by a veth to
/// a "guest" namespace with the VM's MAC and no address (as a DHCP client starts); answers
/// the host's network, the spec and the guest namespace.
async fn plugged_port(t: &mut Topology, name: &str) -> (HostNetwork, VmSpec, String) {
    let host = HostNetwork::new(Shell::in_netns(t.host_ns(1)), None);
    let spec = vm();
    host.plug(&spec, &mut netns::qemu_config())
        .await
        .expect("plug");
    let shell = Shell::in_netns(t.host_ns(1));
    let tap = tap::tap_name(spec.id, 0);
    netns::run(&shell, &["link", "del", &tap]).await;
    let seg = Segment::tenant(5200);
    let nic = &spec.nics[0];
    let guest = t
        .add_guest_port(1, name, &tap, &seg.bridge, "169.254.9.9/32", Some(&nic.mac))
        .await;
    netns::run(&Shell::in_netns(&guest), &["addr", "flush", "dev", "eth0"]).await;
    (host, spec, guest)
}

/// Removes what [`plugged_port`] made on the host.
async fn unplug(t: &Topology, host: &HostNetwork, spec: &VmSpec) {
    let shell = Shell::in_netns(t.host_ns(1));
    netns::run(&shell, &["link", "del", &tap::tap_name(spec.id, 0)]).await;
    host.unplug(spec).await.expect("unplug");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_gets_its_decided_lease_from_its_host() {
    if !netns::can_run("a_port_gets_its_decided_lease_from_its_host") {
        return;
    }
    let mut t = Topology::create('d', 1, false).await;
    let (host, spec, guest) = plugged_port(&mut t, "d1").await;

    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("lease.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\n[ \"$1\" = bound ] && echo \"lease $ip $subnet $router\"\nexit 0\n",
    )
    .expect("script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let (ns, path) = (guest, script);
    let started = Instant::now();
    let out = tokio::task::spawn_blocking(move || udhcpc(&ns, &path))
        .await
        .expect("udhcpc");
    let took = started.elapsed();
    assert!(
        out.contains("lease 10.40.0.10 255.255.255.0 10.40.0.1"),
        "udhcpc saw: {out:?}"
    );
    eprintln!("DHCP DISCOVER to bound: {took:?}");
    assert!(took < Duration::from_secs(10));
    unplug(&t, &host, &spec).await;
}

/// The environment variable naming the client `bench/network.py --part dhcp` runs.
const BENCH_CLIENT: &str = "NIMBUS_BENCH_DHCP_CLIENT";

/// BENCHMARK HARNESS, not a test (ignored; run by `bench/network.py --part dhcp`): the port of
/// [`plugged_port`] (the agent's segment, port security and responder, the tap replaced by a
/// veth), with the command in [`BENCH_CLIENT`] run in the guest namespace with the port's
/// device name as its last argument; its output is printed between `BENCH-OUTPUT` lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark harness of bench/network.py --part dhcp"]
async fn bench_dhcp_client_on_a_port() {
    let client = std::env::var(BENCH_CLIENT).expect("NIMBUS_BENCH_DHCP_CLIENT: the client to run");
    let mut t = Topology::create('q', 1, false).await;
    let (host, spec, guest) = plugged_port(&mut t, "q1").await;
    let mut cmd = std::process::Command::new("ip");
    cmd.args(["netns", "exec", &guest])
        .args(client.split_whitespace())
        .arg("eth0");
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .expect("run the bench's DHCP client");
    println!(
        "BENCH-OUTPUT\n{}BENCH-OUTPUT",
        String::from_utf8_lossy(&out.stdout)
    );
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    unplug(&t, &host, &spec).await;
    assert!(out.status.success(), "the bench's DHCP client failed");
}
