//! Snapshots follow their instance (issue 14, part 1): a tree of three snapshots of the
//! shared guest moves with a live migration, every snapshot restores on the new host to its
//! instant, nothing of them stays on the old host, deletes work there; a move whose target
//! fails while receiving the snapshot data leaves everything on the source.

use super::*;
use nimbus_api::InstanceState;

/// Every memory chunk named by the manifests of VM `id` on `host`.
fn chunks_of(cloud: &Cloud, host: &str, id: &str) -> Vec<String> {
    let mut manifests = Vec::new();
    files_under(
        &cloud.host_dir(host).join("vms").join(id).join("snapshots"),
        &mut manifests,
    );
    manifests
        .iter()
        .filter(|p| p.ends_with("manifest.json"))
        .flat_map(|p| chunk_hashes(p))
        .collect()
}

/// The chunks a host stores: the hashes its pack files hold (hex of each record's hash;
/// format: docs/snapshots.md).
fn chunk_files(cloud: &Cloud, host: &str) -> Vec<String> {
    let mut files = Vec::new();
    files_under(
        &cloud.host_dir(host).join("chunks").join("packs"),
        &mut files,
    );
    let mut out = Vec::new();
    for idx in files
        .iter()
        .filter(|p| p.extension().is_some_and(|x| x == "idx"))
    {
        let bytes = std::fs::read(idx).expect("read index");
        for entry in bytes[12..].chunks_exact(49) {
            out.push(entry[..32].iter().map(|b| format!("{b:02x}")).collect());
        }
    }
    out
}

fn manifest_count(cloud: &Cloud, host: &str, id: &str) -> usize {
    let mut files = Vec::new();
    files_under(&cloud.host_dir(host).join("vms").join(id), &mut files);
    files
        .iter()
        .filter(|p| p.ends_with("manifest.json"))
        .count()
}

/// s1 <- s3 <- s5 (s2 and s4 were deleted before): /data/mark is missing, 3, 5.
pub async fn snapshots_follow_a_live_migration(cloud: &Cloud, client: &Client) {
    exec(client, "snap1", "echo 5 > /data/mark && sync").await;
    let before_s5 = counter(client, "snap1").await;
    cli_ok(
        cloud,
        &["snapshot", "create", "snap1", "--name", "s5", "--wait"],
    );
    let after_s5 = counter(client, "snap1").await;
    exec(client, "snap1", "echo later > /data/mark && sync").await;
    let all = snapshots(cloud, "snap1").await;
    assert_eq!(parent(&all, "s5").as_deref(), Some("s3"));
    let inst = instance(client, "snap1").await;
    let id = inst.id.to_string();
    let src = inst.host.clone().expect("placed");
    let dst = if src == "host1" { "host2" } else { "host1" };
    let chunks = chunks_of(cloud, &src, &id);
    assert_eq!(manifest_count(cloud, &src, &id), 3);

    // The target fails while receiving the snapshot data: everything stays on the source.
    let failpoints = cloud.host_dir(dst).join("failpoints");
    std::fs::write(&failpoints, "snapshot_import.receiving").expect("failpoint");
    let err = cli_err(cloud, &["instance", "migrate", "snap1", "--wait"]);
    std::fs::remove_file(&failpoints).expect("failpoint off");
    assert!(err.contains("injected failure"), "{err}");
    let inst = instance(client, "snap1").await;
    assert_eq!(
        (inst.state, inst.host.as_deref()),
        (InstanceState::Running, Some(src.as_str()))
    );
    assert_eq!(
        manifest_count(cloud, &src, &id),
        3,
        "nothing left the source"
    );
    let on_src = chunk_files(cloud, &src);
    assert!(
        chunks.iter().all(|c| on_src.contains(c)),
        "every chunk stays"
    );
    assert!(
        !cloud.host_dir(dst).join("vms").join(&id).exists()
            && !cloud.host_dir(dst).join("arriving").join(&id).exists()
            && !cloud
                .host_dir(dst)
                .join("arriving")
                .join(format!("{id}.memory"))
                .exists(),
        "no copy on the target"
    );
    assert!(
        chunk_files(cloud, dst).is_empty(),
        "received chunks collected"
    );
    assert!(snapshots(cloud, "snap1")
        .await
        .iter()
        .all(|s| s.host == src));
    let c = counter(client, "snap1").await;
    counter_passes(client, "snap1", c).await;

    // The real move: the layers before the target QEMU starts, the manifests and the memory
    // chunks in the background from the same moment, awaited beside the memory transfer.
    let started = std::time::Instant::now();
    let op = client
        .migrate_instance("snap1", &Default::default())
        .await
        .expect("migrate");
    let op = client
        .wait_operation(&op.id.to_string(), Duration::from_secs(300), |_| {})
        .await
        .expect("wait");
    eprintln!("live migration with 3 snapshots: {:?}", started.elapsed());
    assert_eq!(op.state, OperationState::Succeeded, "{:?}", op.error);
    let copied = |step: &str| {
        let out = op
            .steps
            .iter()
            .find(|s| s.name == step)
            .and_then(|s| s.output.clone());
        out.and_then(|o| o.get("snapshots").cloned())
            .unwrap_or_default()
    };
    let (disk, memory) = (copied("prepare_target"), copied("transfer"));
    eprintln!("disk part: {disk}\nmemory part: {memory}");
    assert!(
        disk["layers"].as_u64() > Some(0) && disk["chunks_sent"] == 0 && disk["snapshots"] == 0,
        "only the layers before the target starts: {disk}"
    );
    assert!(
        memory["snapshots"] == 3 && memory["layers"] == 0,
        "the snapshots beside the memory transfer: {memory}"
    );
    assert_eq!(
        memory["chunks_sent"].as_u64().unwrap_or(0)
            + memory["chunks_skipped"].as_u64().unwrap_or(0),
        {
            let mut unique = chunks.clone();
            unique.sort();
            unique.dedup();
            unique.len() as u64
        },
        "every chunk of the snapshots accounted for"
    );
    let inst = instance(client, "snap1").await;
    assert_eq!(
        (inst.state, inst.host.as_deref()),
        (InstanceState::Running, Some(dst))
    );
    assert_eq!(file(client, "snap1", "/data/mark").await, "later");
    assert!(
        !cloud.host_dir(&src).join("vms").join(&id).exists(),
        "nothing of the VM left on {src}"
    );
    let left = chunk_files(cloud, &src);
    assert!(
        chunks.iter().all(|c| !left.contains(c)),
        "no memory chunk of its snapshots left on {src}"
    );
    assert_eq!(manifest_count(cloud, dst, &id), 3);
    assert!(snapshots(cloud, "snap1")
        .await
        .iter()
        .all(|s| s.host == dst));

    // Each snapshot restores on the new host to its instant.
    for (snapshot, mark) in [("s5", "5"), ("s1", "missing"), ("s3", "3")] {
        let just_before = counter(client, "snap1").await;
        restore_to_mark(client, snapshot, mark).await;
        if snapshot == "s5" {
            let c = counter(client, "snap1").await;
            assert!(
                before_s5 <= c && c < just_before,
                "memory back to s5: counter {c} (s5 was taken between {before_s5} and \
                 {after_s5}; {just_before} before the restore)"
            );
        }
        let c = counter(client, "snap1").await;
        counter_passes(client, "snap1", c).await;
    }
    // Deletes work there too.
    let out = cli_ok(cloud, &["snapshot", "delete", "s5", "--wait"]);
    assert!(out.contains("freed"), "{out}");
    assert_eq!(manifest_count(cloud, dst, &id), 2);
    assert_eq!(current(&snapshots(cloud, "snap1").await), ["s3"]);
}

/// The stopped instance (s1 <- s3 <- d1, its disk as after s3) moves cold with its snapshots:
/// every layer goes with them, it boots on the new host with its disk, and s1 restores
/// there.
pub async fn snapshots_follow_a_cold_migration(cloud: &Cloud, client: &Client) {
    let inst = instance(client, "snap1").await;
    assert_eq!(inst.state, InstanceState::Stopped);
    let id = inst.id.to_string();
    let src = inst.host.clone().expect("placed");
    let dst = if src == "host1" { "host2" } else { "host1" };
    let out = cli_ok(cloud, &["instance", "migrate", "snap1", "--wait"]);
    eprintln!("cold migration with 3 snapshots:\n{out}");
    let inst = instance(client, "snap1").await;
    assert_eq!(
        (inst.state, inst.host.as_deref()),
        (InstanceState::Stopped, Some(dst))
    );
    assert!(!cloud.host_dir(&src).join("vms").join(&id).exists());
    assert_eq!(manifest_count(cloud, dst, &id), 3);
    assert_eq!(cloud.qemu_count(&id), 0, "no QEMU ran for a cold migration");
    cli_ok(cloud, &["instance", "start", "snap1", "--wait"]);
    assert_eq!(file(client, "snap1", "/data/mark").await, "3");
    restore_to_mark(client, "s1", "missing").await;
    cli_ok(cloud, &["instance", "stop", "snap1", "--wait"]);
}
