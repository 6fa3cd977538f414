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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_gets_its_decided_lease_from_its_host() {
    if !netns::can_run("a_port_gets_its_decided_lease_from_its_host") {
        return;
    }
    let mut t = Topology::create('d', 1, false).await;
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
    // The guest starts without an address, as a DHCP client does.
    let guest = t
        .add_guest_port(1, "d1", &tap, &seg.bridge, "169.254.9.9/32", Some(&nic.mac))
        .await;
    netns::run(&Shell::in_netns(&guest), &["addr", "flush", "dev", "eth0"]).await;

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

    netns::run(&shell, &["link", "del", &tap]).await;
    host.unplug(&spec).await.expect("unplug");
}
