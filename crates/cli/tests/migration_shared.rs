//! End to end: live migration on shared storage (`nimbus up --shared-storage`: every host
//! keeps its instance disks in `<data dir>/shared`, as hosts with one NFS mount would). The
//! disk is created there, linked from the host's VM directory, and never copied: the target
//! links to the same file. A real guest checks its own health across the move: uptime, disk
//! content, writes, and a memory workload that verifies every page it wrote.

use nimbus_api::{OperationState, OperationView};
use nimbus_test_utils::guest::*;
use nimbus_test_utils::{wait_until, Cloud, CloudOptions};
use std::path::{Path, PathBuf};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_nimbus");

/// The VM directories of the instance `id` on every host, and the QEMUs running for it.
fn copies(cloud: &Cloud, id: &str) -> (Vec<PathBuf>, usize) {
    let dirs = ["host1", "host2"]
        .iter()
        .map(|h| cloud.host_dir(h).join("vms").join(id))
        .filter(|d| d.exists())
        .collect();
    let qemus = cloud.qemu_count(id);
    (dirs, qemus)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_storage_migration_copies_no_disk() {
    let opts = CloudOptions {
        hosts: 2,
        extra_args: vec!["--shared-storage".into()],
    };
    let cloud = Cloud::start(Path::new(BIN), opts)
        .await
        .expect("start the cloud");
    let client = cloud.client().expect("client");
    let shared = cloud.data_dir().join("shared");

    // Created on shared storage, linked from its host's VM directory.
    create_instances(&cloud, &["shared1"], "small").await;
    let before = instance(&client, "shared1").await;
    let id = before.id.to_string();
    let src = before.host.clone().expect("placed");
    let disk_dir = shared.join(&id);
    let disk = disk_dir.join("disk.qcow2");
    assert!(disk.is_file(), "the disk is on shared storage");
    let src_dir = cloud.host_dir(&src).join("vms").join(&id);
    assert_eq!(
        std::fs::read_link(src_dir.join("disk.qcow2")).expect("a link"),
        disk
    );

    exec(
        &client,
        "shared1",
        "echo shared-data > /data/before && sync",
    )
    .await;
    let (verified_before, _) = start_memcheck(&client, "shared1", 64, 20).await;
    let up_before = uptime(&client, "shared1").await;

    // Through the CLI; `-o json` prints the finished operation.
    let out = cli_ok(
        &cloud,
        &["-o", "json", "instance", "migrate", "shared1", "--wait"],
    );
    let op: OperationView = serde_json::from_str(&out).expect("operation JSON");
    assert_eq!(
        op.state,
        OperationState::Succeeded,
        "{:?}\n{}",
        op.error,
        cloud.log_tail(40)
    );
    let record = client
        .migration(&op.id.to_string())
        .await
        .expect("migration record");
    assert_eq!(record.state, "succeeded", "{record:?}");
    assert_eq!(record.stats.disk_transfer, "shared", "{record:?}");
    let after = instance(&client, "shared1").await;
    let dst = after.host.clone().expect("placed");
    assert_ne!(src, dst, "the instance changed host");
    assert_eq!(
        (record.source.as_str(), record.target.as_str()),
        (&*src, &*dst)
    );
    eprintln!("shared-storage migration: {:?}", record.stats);

    // The guest ran on: same uptime clock, same disk, new writes land, memory intact.
    let up_after = uptime(&client, "shared1").await;
    assert!(
        up_after > up_before,
        "the guest did not reboot: uptime {up_before} -> {up_after}"
    );
    assert_eq!(
        exec(&client, "shared1", "cat /data/before").await.trim(),
        "shared-data"
    );
    assert_eq!(
        exec(
            &client,
            "shared1",
            "echo written-after > /data/after && sync && cat /data/after"
        )
        .await
        .trim(),
        "written-after"
    );
    let (verified_after, stale) = wait_until(
        "memcheck to verify pages on the target",
        Duration::from_secs(60),
        Duration::from_millis(500),
        || async {
            memcheck(&client, "shared1")
                .await
                .filter(|(verified, _)| *verified > verified_before)
        },
    )
    .await
    .expect("memcheck goes on after the migration");
    assert_eq!(stale, 0, "the guest found stale pages after migration");
    eprintln!("memcheck: {verified_before} -> {verified_after} pages verified, none stale");

    // One copy: the target's, linking to the same disk; the source's directory is gone,
    // the disk stayed.
    let dst_dir = cloud.host_dir(&dst).join("vms").join(&id);
    assert_eq!(copies(&cloud, &id), (vec![dst_dir.clone()], 1), "one copy");
    assert!(disk.is_file(), "the disk survives the source cleanup");
    assert_eq!(
        std::fs::read_link(dst_dir.join("disk.qcow2")).expect("a link"),
        disk
    );

    // Deleting the instance deletes its disk.
    cli_ok(&cloud, &["instance", "delete", "shared1", "--wait"]);
    assert_eq!(copies(&cloud, &id), (Vec::new(), 0), "no copy left");
    assert!(!disk_dir.exists(), "the disk directory is removed");
    let left: Vec<_> = std::fs::read_dir(&shared).expect("list").collect();
    assert!(left.is_empty(), "shared storage is empty: {left:?}");
}
