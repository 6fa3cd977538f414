//! End to end: the control plane never destroys what it does not know (issue 11, part 3).
//!
//! One cloud with two hosts on shared storage and one real guest, shared by two scenarios:
//! - a migration whose prepare_target step fails after the target linked the shared disk
//!   (failure injected in the controller: the step's answer is lost) is undone without
//!   touching the disk the source VM runs on;
//! - `nimbus up` stopped, its database removed (a restore gone wrong), started again: the
//!   running VM is not deleted, it is listed as an orphan (CLI and `/metrics`), and only
//!   `nimbus host orphans delete` removes it.

use nimbus_api::{OrphanKind, OrphanView};
use nimbus_test_utils::guest::*;
use nimbus_test_utils::{wait_until, Cloud, CloudOptions};
use std::path::Path;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_nimbus");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_unknown_is_destroyed() {
    // Inherited by `nimbus up`, whose controller runs the migration steps. This test file
    // has one test, so no other test sees it.
    std::env::set_var("NIMBUS_FAILPOINTS", "migrate.after_prepare_target");
    let opts = CloudOptions {
        hosts: 2,
        extra_args: vec!["--shared-storage".into()],
    };
    let mut cloud = Cloud::start(Path::new(BIN), opts)
        .await
        .expect("start the cloud");
    create_instances(&cloud, &["keep1"], "tiny").await;
    let client = cloud.client().expect("client");
    let inst = instance(&client, "keep1").await;
    let id = inst.id.to_string();
    let host = inst.host.clone().expect("placed");
    exec(&client, "keep1", "echo kept > /data/mark && sync").await;

    failed_shared_migration_keeps_the_disk(&cloud, &id, &host).await;
    lost_database_deletes_nothing(&mut cloud, &id, &host).await;
}

async fn failed_shared_migration_keeps_the_disk(cloud: &Cloud, id: &str, host: &str) {
    let client = cloud.client().expect("client");
    let disk = cloud.data_dir().join("shared").join(id).join("disk.qcow2");
    assert!(disk.is_file(), "the disk is on shared storage");
    let err = cli_err(cloud, &["instance", "migrate", "keep1", "--wait"]);
    assert!(err.contains("prepare_target: injected failure"), "{err}");
    assert!(disk.is_file(), "the shared disk survives the undo");
    let after = instance(&client, "keep1").await;
    assert_eq!(after.host.as_deref(), Some(host), "still on its source");
    assert_eq!(cloud.qemu_count(id), 1, "only the source's QEMU runs");
    assert_eq!(
        exec(&client, "keep1", "cat /data/mark").await.trim(),
        "kept",
        "the guest still reads its disk"
    );
}

async fn lost_database_deletes_nothing(cloud: &mut Cloud, id: &str, host: &str) {
    let vm_dir = cloud.host_dir(host).join("vms").join(id);
    let disk = cloud.data_dir().join("shared").join(id).join("disk.qcow2");
    cloud.kill_up().expect("stop nimbus up");
    for f in ["nimbus.db", "nimbus.db-wal", "nimbus.db-shm"] {
        let _ = std::fs::remove_file(cloud.data_dir().join(f));
    }
    cloud.restart_up().await.expect("start again");
    let client = cloud.client().expect("client");
    assert!(
        client.list_instances().await.expect("list").is_empty(),
        "the new database knows no instance"
    );

    // The agent re-adopted the VM and reports it; the reconciler lists it, deletes nothing.
    let orphans: Vec<OrphanView> = wait_until(
        "the VM to be listed as an orphan",
        Duration::from_secs(30),
        Duration::from_millis(500),
        || async {
            let out = cli_ok(cloud, &["-o", "json", "host", "orphans", host]);
            let list: Vec<OrphanView> = serde_json::from_str(&out).expect("orphans JSON");
            (!list.is_empty()).then_some(list)
        },
    )
    .await
    .expect("orphan listed");
    assert_eq!(orphans.len(), 1, "{orphans:?}");
    assert_eq!(orphans[0].vm_id.to_string(), id);
    assert_eq!(orphans[0].kind, OrphanKind::Unknown);
    // Several reconcile passes later (every 2 s) it still runs, with its disk.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(cloud.qemu_count(id), 1, "the orphan VM still runs");
    assert!(disk.is_file() && vm_dir.is_dir(), "its files are intact");
    let table = cli_ok(cloud, &["host", "orphans"]);
    assert!(table.contains(id) && table.contains("unknown"), "{table}");
    let metrics = metrics_text(cloud).await;
    assert!(
        metrics.contains(&format!(
            "nimbus_orphan_vms{{host=\"{host}\",kind=\"unknown\"}} 1"
        )),
        "{metrics}"
    );

    // An id that is not an orphan of that host is refused, and changes nothing.
    let err = cli_err(
        cloud,
        &[
            "host",
            "orphans",
            "delete",
            host,
            &uuid::Uuid::new_v4().to_string(),
        ],
    );
    assert!(err.contains("has no orphan"), "{err}");

    // The operator's command removes it.
    cli_ok(cloud, &["host", "orphans", "delete", host, id]);
    assert_eq!(cloud.qemu_count(id), 0, "the orphan's QEMU is gone");
    assert!(!vm_dir.exists(), "its directory is gone");
    let left = cli_ok(cloud, &["-o", "json", "host", "orphans"]);
    let left: Vec<OrphanView> = serde_json::from_str(&left).expect("orphans JSON");
    assert!(left.is_empty(), "{left:?}");
}

async fn metrics_text(cloud: &Cloud) -> String {
    reqwest::Client::new()
        .get(format!("{}/metrics", cloud.api()))
        .bearer_auth(cloud.token().expect("token"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body")
}
