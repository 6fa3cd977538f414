//! End to end: snapshots of a real guest through the real binary. One booted guest serves
//! every check (TCG guests are slow to boot): a counter process inside it shows whether
//! memory returns to the snapshot's instant, files under /data whether the disk does.

use nimbus_api::{OperationState, OperationView, SnapshotRestored, SnapshotView};
use nimbus_client::Client;
use nimbus_test_utils::guest::*;
use nimbus_test_utils::{wait_until, Cloud, CloudOptions};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[path = "snapshots/moving.rs"]
mod moving;

const BIN: &str = env!("CARGO_BIN_EXE_nimbus");

/// A process that counts five times a second into /run/counter (tmpfs: memory only).
const COUNTER: &str = "sh -c 'i=0; while true; do i=$((i+1)); echo $i > /run/counter; \
                       sleep 0.2; done' </dev/null >/dev/null 2>&1 &";

async fn counter(client: &Client, name: &str) -> u64 {
    exec(client, name, "cat /run/counter")
        .await
        .trim()
        .parse()
        .expect("counter value")
}

/// Waits until the counter passes `value`; answers what it read.
async fn counter_passes(client: &Client, name: &str, value: u64) -> u64 {
    wait_until(
        &format!("the counter of {name} to pass {value}"),
        Duration::from_secs(60),
        Duration::from_millis(300),
        || async {
            let c = client.exec(name, "cat /run/counter").await.ok()?;
            c.output.trim().parse::<u64>().ok().filter(|c| *c > value)
        },
    )
    .await
    .expect("the counter runs")
}

/// What `cat FILE` prints in the guest, or `missing`.
async fn file(client: &Client, name: &str, path: &str) -> String {
    let cmd = format!("cat {path} 2>/dev/null || echo missing");
    exec(client, name, &cmd).await.trim().to_string()
}

async fn snapshots(cloud: &Cloud, instance: &str) -> Vec<SnapshotView> {
    let out = cli_ok(
        cloud,
        &["snapshot", "list", "--instance", instance, "-o", "json"],
    );
    serde_json::from_str(&out).expect("snapshot list JSON")
}

fn parent(all: &[SnapshotView], name: &str) -> Option<String> {
    all.iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no snapshot {name} in {all:?}"))
        .parent
        .clone()
}

fn current(all: &[SnapshotView]) -> Vec<String> {
    all.iter()
        .filter(|s| s.current)
        .map(|s| s.name.clone())
        .collect()
}

/// Restores through the API and waits; answers the finished operation.
async fn restore(client: &Client, snapshot: &str) -> OperationView {
    let op = client.restore_snapshot(snapshot).await.expect("restore");
    client
        .wait_operation(&op.id.to_string(), Duration::from_secs(300), |_| {})
        .await
        .expect("wait")
}

/// Restores `snapshot` of snap1 and checks its disk: /data/mark reads `mark`.
async fn restore_to_mark(client: &Client, snapshot: &str, mark: &str) {
    let op = restore(client, snapshot).await;
    assert_eq!(
        op.state,
        OperationState::Succeeded,
        "{snapshot}: {:?}",
        op.error
    );
    assert_eq!(
        file(client, "snap1", "/data/mark").await,
        mark,
        "disk after {snapshot}"
    );
}

fn restored(op: &OperationView) -> SnapshotRestored {
    let step = op.steps.iter().find(|s| s.name == "restore").expect("step");
    serde_json::from_value(step.output.clone().expect("output")).expect("restore summary")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_end_to_end() {
    let cloud = Cloud::start(Path::new(BIN), CloudOptions::default())
        .await
        .expect("start the cloud");
    let client = cloud.client().expect("client");
    create_instances(&cloud, &["snap1"], "small").await;
    exec(&client, "snap1", COUNTER).await;
    counter_passes(&client, "snap1", 3).await;

    restore_returns_memory_and_disk_to_the_instant(&cloud, &client).await;
    tree_of_three_with_restores_to_each(&cloud, &client).await;
    deleting_the_middle_keeps_the_others_restorable(&cloud, &client).await;
    clone_runs_beside_the_original(&cloud, &client).await;
    corrupted_snapshot_is_refused_and_the_vm_runs_on(&cloud, &client).await;
    moving::snapshots_follow_a_live_migration(&cloud, &client).await;
    disk_only_snapshot_of_a_stopped_instance(&cloud, &client).await;
    moving::snapshots_follow_a_cold_migration(&cloud, &client).await;
    deleting_the_instance_deletes_its_snapshots(&cloud, &client).await;
}

async fn restore_returns_memory_and_disk_to_the_instant(cloud: &Cloud, client: &Client) {
    let pre = counter(client, "snap1").await;
    let out = cli_ok(
        cloud,
        &["snapshot", "create", "snap1", "--name", "s1", "--wait"],
    );
    assert!(out.contains("VM pause") && out.contains("stored"), "{out}");
    eprintln!("{out}");
    // The snapshot's instant lies between these two reads.
    let at_s1 = counter(client, "snap1").await;
    exec(client, "snap1", "echo after > /data/after-s1 && sync").await;
    let before = counter_passes(client, "snap1", at_s1 + 40).await;
    let up_before = uptime(client, "snap1").await;

    let op = restore(client, "s1").await;
    assert_eq!(op.state, OperationState::Succeeded, "{:?}", op.error);
    let (up_after, after) = (
        uptime(client, "snap1").await,
        counter(client, "snap1").await,
    );
    assert!(
        up_after < up_before,
        "the guest's uptime went back: {up_after} s after the restore, {up_before} s before"
    );
    assert!(
        pre <= after && after < before,
        "the counter resumed from the snapshot's value (between {pre} and {at_s1}): {after} \
         after the restore, {before} before"
    );
    let summary = restored(&op);
    eprintln!("restore to s1: {summary:?}");
    assert!(
        summary.first_heartbeat_ms.is_some(),
        "the heartbeat continues after the restore: {summary:?}"
    );
    assert_eq!(file(client, "snap1", "/data/after-s1").await, "missing");
    counter_passes(client, "snap1", after).await;
    let all = snapshots(cloud, "snap1").await;
    assert_eq!(current(&all), ["s1"]);
}

async fn tree_of_three_with_restores_to_each(cloud: &Cloud, client: &Client) {
    // s1 <- s2 <- s3, each with its own /data/mark.
    exec(client, "snap1", "echo 2 > /data/mark && sync").await;
    cli_ok(
        cloud,
        &["snapshot", "create", "snap1", "--name", "s2", "--wait"],
    );
    exec(client, "snap1", "echo 3 > /data/mark && sync").await;
    cli_ok(
        cloud,
        &["snapshot", "create", "snap1", "--name", "s3", "--wait"],
    );
    let all = snapshots(cloud, "snap1").await;
    assert_eq!(parent(&all, "s2").as_deref(), Some("s1"));
    assert_eq!(parent(&all, "s3").as_deref(), Some("s2"));

    for (snapshot, mark) in [("s2", "2"), ("s1", "missing"), ("s3", "3")] {
        let out = cli_ok(cloud, &["snapshot", "restore", snapshot, "--wait"]);
        assert!(out.contains("running after"), "{out}");
        assert_eq!(
            file(client, "snap1", "/data/mark").await,
            mark,
            "after {snapshot}"
        );
        assert_eq!(current(&snapshots(cloud, "snap1").await), [snapshot]);
    }
    let table = cli_ok(cloud, &["snapshot", "list", "--instance", "snap1"]);
    assert!(table.contains("└─ s3 *"), "tree view:\n{table}");
    eprintln!("{table}");
}

async fn deleting_the_middle_keeps_the_others_restorable(cloud: &Cloud, client: &Client) {
    let out = cli_ok(cloud, &["snapshot", "delete", "s2", "--wait"]);
    assert!(out.contains("freed"), "{out}");
    eprintln!("{out}");
    let all = snapshots(cloud, "snap1").await;
    assert!(all.iter().all(|s| s.name != "s2"));
    assert_eq!(parent(&all, "s3").as_deref(), Some("s1"));
    for (snapshot, mark) in [("s1", "missing"), ("s3", "3")] {
        restore_to_mark(client, snapshot, mark).await;
    }
}

async fn clone_runs_beside_the_original(cloud: &Cloud, client: &Client) {
    cli_ok(
        cloud,
        &[
            "instance",
            "create",
            "clone1",
            "--from-snapshot",
            "s3",
            "--wait",
        ],
    );
    let (a, b) = (
        instance(client, "snap1").await,
        instance(client, "clone1").await,
    );
    assert_eq!(b.state, nimbus_api::InstanceState::Running);
    assert_eq!(b.host, a.host, "a clone starts where its snapshot lives");
    assert_ne!(a.mac, b.mac);
    assert_ne!(a.ip, b.ip);
    assert_eq!((b.flavor.as_str(), b.image.as_str()), ("small", "default"));
    // The clone resumed s3's memory and disk, and runs on its own.
    assert_eq!(file(client, "clone1", "/data/mark").await, "3");
    let c = counter(client, "clone1").await;
    counter_passes(client, "clone1", c).await;
    exec(client, "clone1", "echo clone > /data/who && sync").await;
    assert_eq!(file(client, "snap1", "/data/who").await, "missing");
    let c = counter(client, "snap1").await;
    counter_passes(client, "snap1", c).await;
    cli_ok(cloud, &["instance", "delete", "clone1", "--wait"]);
}

/// Every file under `dir`.
fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// Memory chunk hashes a snapshot manifest names (agent layout: docs/snapshots.md).
fn chunk_hashes(manifest: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(manifest).expect("read manifest");
    let m: serde_json::Value = serde_json::from_str(&text).expect("manifest JSON");
    m["memory"]["chunks"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .filter_map(|c| c["hash"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Damages a memory chunk of `snapshot` that no other snapshot of the VM uses (so the
/// others stay intact); answers its path.
fn damage_own_chunk(cloud: &Cloud, snapshot: &SnapshotView) -> PathBuf {
    let host_dir = cloud.host_dir(&snapshot.host);
    let snapshots_dir = host_dir
        .join("vms")
        .join(snapshot.instance_id.to_string())
        .join("snapshots");
    let own = snapshots_dir
        .join(snapshot.id.to_string())
        .join("manifest.json");
    let mut manifests = Vec::new();
    files_under(&snapshots_dir, &mut manifests);
    let others: std::collections::HashSet<String> = manifests
        .iter()
        .filter(|p| p.ends_with("manifest.json") && **p != own)
        .flat_map(|p| chunk_hashes(p))
        .collect();
    let mine = chunk_hashes(&own);
    let hash = mine
        .iter()
        .find(|h| !others.contains(*h))
        .or(mine.first())
        .unwrap_or_else(|| panic!("{} names no memory chunk", own.display()));
    let chunks = nimbus_agent::snapshot::chunks::ChunkStore::new(host_dir.join("chunks"));
    let (pack, span) = chunks
        .stored_span(hash)
        .expect("read the pack index")
        .unwrap_or_else(|| panic!("chunk {hash} not found under {}", host_dir.display()));
    nimbus_test_utils::damage::flip_bytes(&pack, span);
    pack
}

async fn corrupted_snapshot_is_refused_and_the_vm_runs_on(cloud: &Cloud, client: &Client) {
    cli_ok(
        cloud,
        &["snapshot", "create", "snap1", "--name", "s4", "--wait"],
    );
    let s4 = client.snapshot("s4").await.expect("s4");
    let victim = damage_own_chunk(cloud, &s4);

    exec(client, "snap1", "echo kept > /data/after-s4 && sync").await;
    let before = counter(client, "snap1").await;
    let op = restore(client, "s4").await;
    assert_eq!(
        op.state,
        OperationState::Failed,
        "a corrupted snapshot is refused"
    );
    let error = op.error.clone().unwrap_or_default();
    eprintln!("restore of the damaged s4: {error}");
    assert!(
        error.contains("damaged") && error.contains("checksum"),
        "the refusal says why ({} was damaged): {error}",
        victim.display()
    );
    // The VM is untouched: running, its disk and memory as they were.
    let inst = instance(client, "snap1").await;
    assert_eq!(inst.state, nimbus_api::InstanceState::Running);
    assert_eq!(file(client, "snap1", "/data/after-s4").await, "kept");
    assert!(counter(client, "snap1").await >= before);
    counter_passes(client, "snap1", before).await;
    assert_eq!(
        client.snapshot("s4").await.expect("s4").state,
        nimbus_api::SnapshotState::Available
    );
    cli_ok(cloud, &["snapshot", "delete", "s4", "--wait"]);
}

async fn disk_only_snapshot_of_a_stopped_instance(cloud: &Cloud, client: &Client) {
    cli_ok(cloud, &["instance", "stop", "snap1", "--wait"]);
    let err = cli_err(cloud, &["snapshot", "create", "snap1", "--name", "m1"]);
    assert!(err.contains("--disk-only"), "{err}");
    cli_ok(
        cloud,
        &[
            "snapshot",
            "create",
            "snap1",
            "--name",
            "d1",
            "--disk-only",
            "--wait",
        ],
    );
    let d1 = client.snapshot("d1").await.expect("d1");
    assert!(!d1.memory);
    assert_eq!(d1.parent.as_deref(), Some("s3"));
    assert_eq!(
        instance(client, "snap1").await.state,
        nimbus_api::InstanceState::Stopped
    );
}

async fn deleting_the_instance_deletes_its_snapshots(cloud: &Cloud, client: &Client) {
    let count = snapshots(cloud, "snap1").await.len();
    assert_eq!(count, 3, "s1, s3 and d1");
    let out = cli_ok(cloud, &["instance", "delete", "snap1", "--wait"]);
    assert!(out.contains("deleted its 3 snapshot(s) too"), "{out}");
    assert!(client.list_snapshots(None).await.expect("list").is_empty());
}
