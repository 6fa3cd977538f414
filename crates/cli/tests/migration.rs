//! End to end: live migration between hosts of a real cloud (hosts in network namespaces as
//! root), with real guests whose health is checked from inside: heartbeat, uptime, disk
//! content, and a memory workload that verifies every page it wrote (QEMU can report success
//! for a migration that corrupted the guest, so a migration counts only if the guest agrees).

use nimbus_api::{InstanceState, MigrateInstance, OperationState, StepState};
use nimbus_client::Client;
use nimbus_test_utils::guest::*;
use nimbus_test_utils::{wait_until, Cloud, CloudOptions};
use std::path::Path;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_nimbus");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_migration_end_to_end() {
    // Every migration's transfer starts 2 s after its target is ready, so that the probes
    // of a waiting target (plain_probes) find its ports open: a fast migration closed them
    // before the second probe (clean-clone CI run).
    std::env::set_var("NIMBUS_FAILPOINT_HOLD", "migrate.transfer:2");
    let mut cloud = Cloud::start(Path::new(BIN), CloudOptions::default())
        .await
        .expect("start the cloud");
    let client = cloud.client().expect("client");
    create_instances(&cloud, &["idle1", "busy1"], "small").await;

    idle_guest_moves_with_its_disk_and_state(&cloud, &client).await;
    busy_guest_memory_stays_intact(&cloud, &client).await;
    faster_than_the_link_still_converges(&cloud, &client).await;
    cancel_leaves_the_vm_on_its_source(&cloud, &client).await;
    killed_target_leaves_the_vm_on_its_source(&cloud, &client).await;
    controller_restart_mid_migration_ends_in_one_place(&mut cloud).await;
    let client = cloud.client().expect("client");
    drain_moves_everything_off_a_host(&cloud, &client).await;
}

async fn idle_guest_moves_with_its_disk_and_state(cloud: &Cloud, client: &Client) {
    exec(client, "idle1", "echo migrated-data > /data/before && sync").await;
    let before = instance(client, "idle1").await;
    let src = before.host.clone().expect("placed");
    let up_before = uptime(client, "idle1").await;
    // A peer on another host pings the instance across the migration (network follows it).
    let peer = instance(client, "busy1").await;
    assert_ne!(
        peer.host, before.host,
        "spread placement put the two on different hosts"
    );
    let ip = before.ip.clone().expect("ip");
    let ip = ip.split('/').next().expect("addr");
    // Hosts learn their VXLAN peers when they re-register (every few seconds).
    wait_until(
        "the peer to reach the instance",
        Duration::from_secs(30),
        Duration::from_millis(500),
        || async {
            let out = client
                .exec("busy1", &format!("ping -c 1 -W 1 {ip}"))
                .await
                .ok()?;
            (out.exit_code == 0).then_some(())
        },
    )
    .await
    .expect("network between hosts");
    exec(
        client,
        "busy1",
        &format!("ping -i 0.05 {ip} </dev/null >/run/ping.log 2>&1 &"),
    )
    .await;
    let out = cli_ok(cloud, &["instance", "migrate", "idle1", "--wait"]);
    assert!(out.contains("downtime"), "summary printed: {out}");
    let after = instance(client, "idle1").await;
    assert_eq!(after.state, InstanceState::Running);
    let dst = after.host.clone().expect("placed");
    assert_ne!(src, dst, "the instance changed host");
    assert_eq!(
        (before.ip, before.mac),
        (after.ip, after.mac),
        "IP and MAC move with it"
    );
    let up_after = uptime(client, "idle1").await;
    assert!(
        up_after > up_before,
        "the guest did not reboot: uptime {up_before} -> {up_after}"
    );
    assert!(
        exec(client, "idle1", "cat /data/before")
            .await
            .contains("migrated-data"),
        "disk content moved"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let log = exec(
        client,
        "busy1",
        "killall -INT ping; sleep 0.3; cat /run/ping.log",
    )
    .await;
    let seqs: Vec<u64> = log
        .lines()
        .filter_map(|l| {
            l.split("seq=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    let sent: u64 = log
        .lines()
        .find_map(|l| {
            l.split(" packets transmitted")
                .next()
                .filter(|_| l.contains("packets transmitted"))?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no ping summary: {log}"));
    assert!(sent > 20, "ping ran across the migration: {log}");
    let max_gap = seqs.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
    let last = *seqs.last().expect("replies");
    assert!(
        last + 10 >= sent,
        "replies continue after the migration (last reply {last} of {sent})"
    );
    eprintln!(
        "ping across migration: {} replies, largest gap {} x 50 ms",
        seqs.len(),
        max_gap
    );
    let hosts = client.list_hosts().await.expect("hosts");
    let on = |h: &str| hosts.iter().find(|x| x.name == h).expect("host").instances;
    assert_eq!(cloud.qemu_count(&after.id.to_string()), 1, "one QEMU");
    assert!(on(&dst) >= 1);
    let ops = client.list_operations(5).await.expect("ops");
    let op = ops
        .iter()
        .find(|o| o.kind == nimbus_api::OperationKind::InstanceMigrate)
        .expect("op");
    let m = client.migration(&op.id.to_string()).await.expect("record");
    assert_eq!(m.state, "succeeded");
    assert!(
        m.stats.transferred_bytes > 0 && m.stats.total_ms > 0,
        "{m:?}"
    );
    assert!(
        m.stats.downtime_ms.is_some() && m.stats.guest_pause_ms.is_some(),
        "{m:?}"
    );
    eprintln!("idle migration: {:?}", m.stats);
}

/// The busy guest's migration runs over TLS; while its target waits, a client without a
/// certificate gets nothing from the target's migration port or its NBD port of the disk,
/// and neither does a host of the cloud other than the source (the target's own certificate).
async fn busy_guest_memory_stays_intact(cloud: &Cloud, client: &Client) {
    let (v0, _) = start_memcheck(client, "busy1", 64, 50).await;
    let src = instance(client, "busy1").await.host;
    let op = client
        .migrate_instance("busy1", &MigrateInstance::default())
        .await
        .expect("migrate");
    let id = op.id.to_string();
    wait_for_step(client, &id, "prepare_target", |s| s == StepState::Done).await;
    let view = client.operation(&id).await.expect("operation");
    let ready = view
        .steps
        .iter()
        .find(|s| s.name == "prepare_target")
        .and_then(|s| s.output.as_ref())
        .and_then(|o| o.get("ready"))
        .cloned()
        .expect("prepare_target reports where the target listens");
    assert_eq!(ready["tls"], true, "the target serves TLS: {ready}");
    let uri = ready["migration_uri"].as_str().expect("uri");
    plain_probes::migration_port_gives_nothing(uri).await;
    let hosts = client.list_hosts().await.expect("hosts");
    let dst = hosts
        .iter()
        .map(|h| h.name.clone())
        .find(|h| Some(h) != src.as_ref())
        .expect("a target host");
    let served = plain_probes::other_host_is_refused(uri, &cloud.host_dir(&dst), &dst).await;
    plain_probes::assert_migration_certificate(&served, &dst);
    // The disk mirror's NBD port is the target agent's tunnel too.
    let nbd = &ready["nbd"];
    let (nbd_host, nbd_port) = (
        nbd["host"].as_str().expect("nbd host"),
        nbd["port"].as_u64().expect("nbd port") as u16,
    );
    plain_probes::nbd_port_gives_nothing(
        nbd_host,
        nbd_port,
        nbd["export"].as_str().expect("export"),
    )
    .await;
    let nbd_uri = format!("tcp:{nbd_host}:{nbd_port}");
    plain_probes::other_host_is_refused(&nbd_uri, &cloud.host_dir(&dst), &dst).await;
    let op = client
        .wait_operation(&id, Duration::from_secs(300), |_| {})
        .await
        .expect("wait");
    let m = client.migration(&id).await.ok();
    assert_eq!(
        op.state,
        OperationState::Succeeded,
        "{:?}\n{}",
        op.error,
        cloud.log_tail(40)
    );
    assert_ne!(instance(client, "busy1").await.host, src);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (v1, stale) = memcheck(client, "busy1").await.expect("memcheck status");
    assert_eq!(stale, 0, "the guest found stale pages after migration");
    assert!(
        v1 > v0,
        "memcheck kept verifying after migration ({v0} -> {v1})"
    );
    eprintln!("busy migration: {:?}", m.map(|m| m.stats));
}

/// A guest dirtying memory as fast as it can (far beyond what one migration stream moves
/// under TCG): with post-copy allowed, nimbus's policy must still finish the move.
async fn faster_than_the_link_still_converges(cloud: &Cloud, client: &Client) {
    exec(
        client,
        "busy1",
        "killall memcheck; memcheck 128 0 </dev/null >/dev/null 2>&1 &",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let src = instance(client, "busy1").await.host;
    let req = MigrateInstance {
        allow_postcopy: Some(true),
        max_downtime_ms: Some(20),
        ..Default::default()
    };
    let (op, m) = migrate_and_wait(client, "busy1", req).await;
    assert_eq!(
        op.state,
        OperationState::Succeeded,
        "{:?}\n{}",
        op.error,
        cloud.log_tail(40)
    );
    assert_ne!(instance(client, "busy1").await.host, src);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, stale) = memcheck(client, "busy1").await.expect("memcheck status");
    assert_eq!(
        stale, 0,
        "no stale page after a migration of a guest dirtying at full speed"
    );
    eprintln!("fast dirtier migration: {:?}", m.map(|m| m.stats));
    exec(client, "busy1", "killall memcheck; true").await;
}

async fn cancel_leaves_the_vm_on_its_source(cloud: &Cloud, client: &Client) {
    let before = instance(client, "busy1").await;
    // A guest dirtying memory fast with a 1 ms budget: pre-copy runs long enough to cancel.
    exec(
        client,
        "busy1",
        "killall memcheck; memcheck 96 0 </dev/null >/dev/null 2>&1 &",
    )
    .await;
    let req = MigrateInstance {
        max_downtime_ms: Some(1),
        ..Default::default()
    };
    let op = client
        .migrate_instance("busy1", &req)
        .await
        .expect("migrate");
    let id = op.id.to_string();
    wait_for_step(client, &id, "transfer", |s| s == StepState::Running).await;
    cli_ok(cloud, &["operation", "cancel", &id]);
    let done = client
        .wait_operation(&id, Duration::from_secs(120), |_| {})
        .await
        .expect("wait");
    assert_eq!(done.state, OperationState::Cancelled, "{:?}", done.error);
    let after = instance(client, "busy1").await;
    assert_eq!(
        (after.state, after.host.clone()),
        (InstanceState::Running, before.host.clone())
    );
    let (_, stale) = memcheck(client, "busy1").await.expect("memcheck status");
    assert_eq!(stale, 0);
    assert_eq!(
        cloud.qemu_count(&after.id.to_string()),
        1,
        "target copy removed"
    );
    exec(client, "busy1", "killall memcheck; true").await;
}

async fn killed_target_leaves_the_vm_on_its_source(cloud: &Cloud, client: &Client) {
    let before = instance(client, "busy1").await;
    exec(
        client,
        "busy1",
        "memcheck 96 0 </dev/null >/dev/null 2>&1 &",
    )
    .await;
    let req = MigrateInstance {
        max_downtime_ms: Some(1),
        ..Default::default()
    };
    let op = client
        .migrate_instance("busy1", &req)
        .await
        .expect("migrate");
    let id = op.id.to_string();
    let src = before.host.clone().expect("placed");
    let target_pid = wait_until(
        "the target QEMU",
        Duration::from_secs(60),
        Duration::from_millis(50),
        || async {
            cloud
                .qemu_pids()
                .into_iter()
                .find(|(d, _)| {
                    d.ends_with(before.id.to_string()) && !d.starts_with(cloud.host_dir(&src))
                })
                .map(|(_, pid)| pid)
        },
    )
    .await
    .expect("target");
    wait_for_step(client, &id, "transfer", |s| s == StepState::Running).await;
    if let Err(e) = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(target_pid),
        nix::sys::signal::Signal::SIGKILL,
    ) {
        let op = client.operation(&id).await.expect("op");
        panic!(
            "cannot kill the target QEMU {target_pid}: {e}; operation: {op:#?}\n{}",
            cloud.log_tail(40)
        );
    }
    let done = client
        .wait_operation(&id, Duration::from_secs(120), |_| {})
        .await
        .expect("wait");
    assert_eq!(done.state, OperationState::Failed);
    let after = instance(client, "busy1").await;
    assert_eq!(
        (after.state, after.host.clone()),
        (InstanceState::Running, before.host.clone())
    );
    let (_, stale) = memcheck(client, "busy1").await.expect("memcheck status");
    assert_eq!(stale, 0);
    assert_eq!(cloud.qemu_count(&after.id.to_string()), 1);
    exec(client, "busy1", "killall memcheck; true").await;
}

async fn controller_restart_mid_migration_ends_in_one_place(cloud: &mut Cloud) {
    let client = cloud.client().expect("client");
    let before = instance(&client, "idle1").await;
    let op = client
        .migrate_instance("idle1", &MigrateInstance::default())
        .await
        .expect("migrate");
    let id = op.id.to_string();
    wait_for_step(&client, &id, "prepare_target", |s| s != StepState::Pending).await;
    cloud.kill_up().expect("kill");
    cloud.restart_up().await.expect("restart");
    let client = cloud.client().expect("client");
    let done = client
        .wait_operation(&id, Duration::from_secs(240), |_| {})
        .await
        .expect("wait");
    assert!(done.state.is_final());
    let after = instance(&client, "idle1").await;
    assert_eq!(after.state, InstanceState::Running, "{after:?}");
    if done.state == OperationState::Succeeded {
        assert_ne!(after.host, before.host);
    } else {
        assert_eq!(after.host, before.host);
    }
    wait_until(
        "exactly one QEMU for the instance",
        Duration::from_secs(30),
        Duration::from_millis(300),
        || async { (cloud.qemu_count(&after.id.to_string()) == 1).then_some(()) },
    )
    .await
    .expect("one copy");
    assert!(uptime(&client, "idle1").await > 1.0);
}

async fn drain_moves_everything_off_a_host(cloud: &Cloud, client: &Client) {
    create_instances(cloud, &["extra1"], "tiny").await;
    let host = "host1";
    // Put everything on host1 first so that the drain has three instances to move.
    for i in client.list_instances().await.expect("list") {
        if i.host.as_deref() != Some(host) {
            let (op, _) = migrate_and_wait(
                client,
                &i.name,
                MigrateInstance {
                    to: Some(host.into()),
                    ..Default::default()
                },
            )
            .await;
            assert_eq!(op.state, OperationState::Succeeded, "{:?}", op.error);
        }
    }
    assert_eq!(client.host(host).await.expect("host").instances, 3);
    cli_ok(cloud, &["host", "drain", host, "--wait"]);
    let h = client.host(host).await.expect("host");
    assert!(!h.enabled, "a drained host is disabled");
    assert_eq!(h.instances, 0);
    for i in client.list_instances().await.expect("list") {
        assert_eq!(
            (i.state, i.host.as_deref()),
            (InstanceState::Running, Some("host2")),
            "{i:?}"
        );
        exec(client, &i.name, "true").await;
    }
    cli_ok(cloud, &["host", "enable", host]);
    assert!(client.host(host).await.expect("host").enabled);
    for i in client.list_instances().await.expect("list") {
        cli_ok(cloud, &["instance", "delete", &i.name, "--wait"]);
    }
    assert!(cloud.qemu_pids().is_empty());
}

/// Clients on the underlay that are not the source host, against a waiting target.
#[path = "migration/plain_probes.rs"]
mod plain_probes;
