//! End to end: stopped instances move too (issue 14, part 2). Two hosts with local disks:
//! - `nimbus instance migrate` of a stopped instance is a cold migration: its disk is copied
//!   to the other host (checked there against its digest), the source copy is deleted, it
//!   stays stopped, and once started on its new host its files are there;
//! - `nimbus host drain` moves a running instance live and a stopped one cold: the host is
//!   left empty.

use nimbus_api::{InstanceState, MigrateInstance, OperationKind, OperationState, OperationView};
use nimbus_test_utils::guest::*;
use nimbus_test_utils::{Cloud, CloudOptions};
use std::path::Path;

const BIN: &str = env!("CARGO_BIN_EXE_nimbus");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_instances_move_cold_and_drain_leaves_nothing() {
    let cloud = Cloud::start(Path::new(BIN), CloudOptions::default())
        .await
        .expect("start the cloud");
    let client = cloud.client().expect("client");
    create_instances(&cloud, &["cold1", "run1"], "tiny").await;
    exec(&client, "cold1", "echo cold-data > /data/kept && sync").await;
    cli_ok(&cloud, &["instance", "stop", "cold1", "--wait"]);
    let before = instance(&client, "cold1").await;
    let id = before.id.to_string();
    let src = before.host.clone().expect("placed");
    let dst = if src == "host1" { "host2" } else { "host1" };

    let out = cli_ok(
        &cloud,
        &["-o", "json", "instance", "migrate", "cold1", "--wait"],
    );
    let op: OperationView = serde_json::from_str(&out).expect("operation JSON");
    assert_eq!(
        (op.kind, op.state),
        (
            OperationKind::InstanceColdMigrate,
            OperationState::Succeeded
        ),
        "{:?}\n{}",
        op.error,
        cloud.log_tail(30)
    );
    let record = client
        .migration(&op.id.to_string())
        .await
        .expect("migration record");
    assert_eq!(record.stats.disk_transfer, "copy", "{record:?}");
    assert!(record.stats.transferred_bytes > 0, "{record:?}");
    let after = instance(&client, "cold1").await;
    assert_eq!(
        (after.state, after.host.as_deref()),
        (InstanceState::Stopped, Some(dst))
    );
    assert!(
        !cloud.host_dir(&src).join("vms").join(&id).exists(),
        "nothing left on the source"
    );
    assert!(cloud
        .host_dir(dst)
        .join("vms")
        .join(&id)
        .join("disk.qcow2")
        .is_file());
    assert_eq!(cloud.qemu_count(&id), 0, "no QEMU ran for a cold migration");

    cli_ok(&cloud, &["instance", "start", "cold1", "--wait"]);
    let kept = exec(&client, "cold1", "cat /data/kept").await;
    assert_eq!(kept.trim(), "cold-data", "the disk came along");

    // Drain: cold1 (stopped) and run1 (running) on one host; both leave it.
    cli_ok(&cloud, &["instance", "stop", "cold1", "--wait"]);
    let host = dst;
    if instance(&client, "run1").await.host.as_deref() != Some(host) {
        let req = MigrateInstance {
            to: Some(host.into()),
            ..Default::default()
        };
        let (op, _) = migrate_and_wait(&client, "run1", req).await;
        assert_eq!(op.state, OperationState::Succeeded, "{:?}", op.error);
    }
    cli_ok(&cloud, &["host", "drain", host, "--wait"]);
    let h = client.host(host).await.expect("host");
    assert_eq!(h.instances, 0, "the drained host is empty");
    let cold = instance(&client, "cold1").await;
    let run = instance(&client, "run1").await;
    assert_eq!(
        (cold.state, cold.host.as_deref()),
        (InstanceState::Stopped, Some(src.as_str()))
    );
    assert_eq!(
        (run.state, run.host.as_deref()),
        (InstanceState::Running, Some(src.as_str()))
    );
    exec(&client, "run1", "true").await;
    for name in ["cold1", "run1"] {
        cli_ok(&cloud, &["instance", "delete", name, "--wait"]);
    }
    assert!(cloud.qemu_pids().is_empty());
}
