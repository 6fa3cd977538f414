//! Checkpoints on one agent with the default guest (skipped, saying so, when the image is
//! not built): a counter process and files on the disk, snapshots with memory, restore,
//! a branch, deleting a snapshot in the middle of a chain, a clone, a disk-only snapshot and
//! a damaged snapshot refused. One booted guest serves every assertion (TCG is slow).

mod common;

use common::{wait_for, QemuReaper, TestAgent};
use nimbus_agent::ImageManifest;
use nimbus_agent_api::{
    AgentClient, CloneRequest, DiskSpec, NicSpec, RestoreRequest, SnapshotRequest, VmRunState,
    VmSpec,
};
use std::path::Path;
use std::time::Duration;
use uuid::Uuid;

const BOOT_LIMIT: Duration = Duration::from_secs(90);

async fn sh(c: &AgentClient, id: Uuid, command: &str) -> String {
    common::exec(c, id, command).await.trim().to_string()
}

async fn counter(c: &AgentClient, id: Uuid) -> u64 {
    sh(c, id, "cat /run/counter")
        .await
        .parse()
        .expect("counter is a number")
}

/// Takes a snapshot; its id and what it occupies on the host (`stored_bytes`).
async fn snapshot(c: &AgentClient, id: Uuid, memory: bool) -> (Uuid, u64) {
    let sid = Uuid::new_v4();
    let r = c
        .snapshot(
            id,
            &SnapshotRequest {
                snapshot_id: sid,
                memory,
            },
        )
        .await
        .expect("snapshot");
    eprintln!(
        "snapshot: pause {:.2} ms, total {} ms, disk layer {} B, memory {} B, new memory {} B",
        r.vm_pause_ms, r.total_ms, r.disk_layer_bytes, r.memory_bytes, r.memory_new_bytes
    );
    match memory {
        true => assert!(r.vm_pause_ms > 0.0 && r.memory_bytes > 0, "{r:?}"),
        // The disk switches while the guest runs: no pause.
        false => assert_eq!(r.vm_pause_ms, 0.0, "{r:?}"),
    }
    (sid, r.stored_bytes)
}

/// Restores snapshot `sid`; one with memory resumes the guest, which beats at once (a
/// disk-only one boots afresh: the caller waits for it).
async fn restore(c: &AgentClient, id: Uuid, sid: Uuid, memory: bool) {
    let r = c
        .restore_snapshot(id, sid, &RestoreRequest { step_clock: true })
        .await
        .expect("restore");
    eprintln!(
        "restore: running after {} ms, heartbeat after {:?} ms",
        r.running_ms, r.first_heartbeat_ms
    );
    assert_eq!(r.status.state, VmRunState::Running);
    if memory {
        assert!(r.first_heartbeat_ms.is_some(), "no heartbeat after restore");
    }
}

fn spec(id: Uuid, name: &str, image: &ImageManifest, mac: &str) -> VmSpec {
    VmSpec {
        id,
        name: name.into(),
        vcpus: 1,
        memory_mib: 256,
        image: image.guest_image(),
        disk: DiskSpec { size_gib: 1 },
        ha: false,
        seed: None,
        nics: vec![NicSpec {
            mac: mac.into(),
            ip: "10.200.9.2/16".into(),
            gateway: None,
            vni: None,
        }],
    }
}

fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            out.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_restore_branch_delete_clone() {
    let Some(image) = common::default_image("snapshots_restore_branch_delete_clone") else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let _reaper = QemuReaper(tmp.path().to_path_buf());
    let state_dir = tmp.path().join("state");
    let agent = TestAgent::start(&state_dir).await;
    let c = agent.client.clone();
    let id = Uuid::new_v4();
    let vm_dir = state_dir.join("vms").join(id.to_string());
    // No NIC device plumbing without a host network here: the spec has none.
    let mut s = spec(id, "snap-guest", &image, "52:54:00:00:00:01");
    s.nics.clear();
    c.define_vm(&s).await.expect("define");
    c.start_vm(id).await.expect("start");
    wait_for(&c, id, BOOT_LIMIT, "guest ready", |s| s.guest_ready).await;
    sh(
        &c,
        id,
        "i=0; (while true; do i=$((i+1)); echo $i > /run/counter; sleep 0.1; done) </dev/null >/dev/null 2>&1 &",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // S1: memory + disk. Afterwards a file is written and the counter moves on.
    let at_s1 = counter(&c, id).await;
    let (s1, s1_stored) = snapshot(&c, id, true).await;
    sh(&c, id, "echo after-s1 > /data/after-s1.txt; sync").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before_restore = counter(&c, id).await;
    assert!(
        before_restore > at_s1 + 5,
        "counter runs: {at_s1} -> {before_restore}"
    );
    // S2 a moment later: it shares most memory with S1.
    let (s2, s2_stored) = snapshot(&c, id, true).await;
    let dir = nimbus_agent::instance::files::VmDir::new(vm_dir.clone());
    let held = nimbus_agent::snapshot::stored_bytes_of(&dir);
    // What the host meters is what the two snapshots reported adding (memory chunks are
    // packed and compressed, so this is less than the guest's memory), and it is not nothing.
    assert!(
        s1_stored > 1 << 20,
        "the first snapshot stored {s1_stored} bytes"
    );
    assert_eq!(
        held,
        s1_stored + s2_stored,
        "snapshots hold {held} bytes (metered)"
    );

    // Restore S1: the file is gone, the counter resumes from about its S1 value.
    restore(&c, id, s1, true).await;
    let after = counter(&c, id).await;
    assert!(
        after < before_restore && after >= at_s1,
        "counter after restore {after}, just before S1 {at_s1}, before restore {before_restore}"
    );
    assert_eq!(
        sh(&c, id, "ls /data/after-s1.txt 2>&1 || echo gone")
            .await
            .lines()
            .last(),
        Some("gone")
    );
    // The guest's clock was stepped to now.
    let guest_now: i64 = sh(&c, id, "date +%s").await.parse().expect("date");
    let host_now = chrono::Utc::now().timestamp();
    assert!(
        (guest_now - host_now).abs() <= 3,
        "guest clock {guest_now}, host {host_now}"
    );

    // A branch from S1: S3.
    sh(&c, id, "echo branch > /data/branch.txt; sync").await;
    let (s3, _) = snapshot(&c, id, true).await;

    // Delete S1, the root of the chain: S2 and S3 stay restorable.
    let freed = c.delete_snapshot(id, s1).await.expect("delete s1");
    eprintln!("delete S1 freed {} bytes", freed.freed_bytes);
    restore(&c, id, s2, true).await;
    assert_eq!(sh(&c, id, "cat /data/after-s1.txt").await, "after-s1");
    assert_eq!(
        sh(&c, id, "ls /data/branch.txt 2>&1 || echo gone")
            .await
            .lines()
            .last(),
        Some("gone")
    );
    restore(&c, id, s3, true).await;
    assert_eq!(sh(&c, id, "cat /data/branch.txt").await, "branch");
    assert_eq!(
        sh(&c, id, "ls /data/after-s1.txt 2>&1 || echo gone")
            .await
            .lines()
            .last(),
        Some("gone")
    );

    // A damaged snapshot is refused and the VM is untouched.
    let pid = c.vm(id).await.expect("vm").pid;
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            vm_dir
                .join("snapshots")
                .join(s2.to_string())
                .join("manifest.json"),
        )
        .expect("manifest"),
    )
    .expect("json");
    let chunk = manifest["memory"]["chunks"][3]["hash"]
        .as_str()
        .expect("chunk")
        .to_string();
    let chunks = nimbus_agent::snapshot::chunks::ChunkStore::new(state_dir.join("chunks"));
    let (pack_path, span) = chunks
        .stored_span(&chunk)
        .expect("pack index")
        .expect("chunk in a pack");
    let good = nimbus_test_utils::damage::flip_bytes(&pack_path, span);
    let err = c
        .restore_snapshot(id, s2, &RestoreRequest { step_clock: true })
        .await
        .expect_err("damaged snapshot");
    eprintln!("refused: {err}");
    assert!(err.to_string().contains("damaged"), "{err}");
    let now = c.vm(id).await.expect("vm");
    assert_eq!((now.state, now.pid), (VmRunState::Running, pid));
    assert_eq!(sh(&c, id, "cat /data/branch.txt").await, "branch");
    std::fs::write(&pack_path, &good).expect("repair");

    // A clone of S2 runs beside the original with its own identity.
    let clone_id = Uuid::new_v4();
    let mut clone_spec = spec(clone_id, "snap-clone", &image, "52:54:00:00:00:02");
    clone_spec.nics.clear();
    c.clone_vm(&CloneRequest {
        spec: clone_spec,
        source_vm: id,
        snapshot_id: s2,
    })
    .await
    .expect("clone");
    assert_eq!(sh(&c, clone_id, "cat /data/after-s1.txt").await, "after-s1");
    assert_eq!(sh(&c, clone_id, "hostname").await, "snap-clone");
    assert_eq!(
        sh(&c, clone_id, "cat /run/nimbus/cloned-from").await,
        id.to_string()
    );
    assert_eq!(sh(&c, id, "hostname").await, "snap-guest");

    // A disk-only snapshot of the stopped VM, then restore of it boots that disk.
    c.stop_vm(
        id,
        &nimbus_agent_api::StopRequest {
            timeout_secs: 30,
            force: false,
        },
    )
    .await
    .expect("stop");
    wait_for(&c, id, Duration::from_secs(60), "stopped", |s| {
        s.state == VmRunState::Stopped
    })
    .await;
    let (s4, _) = snapshot(&c, id, false).await;
    c.start_vm(id).await.expect("start");
    wait_for(&c, id, BOOT_LIMIT, "guest ready", |s| s.guest_ready).await;
    sh(&c, id, "rm /data/branch.txt; sync").await;
    restore(&c, id, s4, false).await;
    wait_for(&c, id, BOOT_LIMIT, "guest ready", |s| s.guest_ready).await;
    assert_eq!(sh(&c, id, "cat /data/branch.txt").await, "branch");

    // Deleting every snapshot leaves no snapshot files and no memory chunk.
    for sid in [s2, s3, s4] {
        c.delete_snapshot(id, sid).await.expect("delete");
    }
    assert_eq!(files_under(&vm_dir.join("snapshots")), Vec::<String>::new());
    assert_eq!(nimbus_agent::snapshot::stored_bytes_of(&dir), 0);
    c.delete_vm(clone_id).await.expect("delete clone");
    let chunk_dirs = files_under(&state_dir.join("chunks"));
    let chunks: usize = chunk_dirs
        .iter()
        .map(|d| files_under(&state_dir.join("chunks").join(d)).len())
        .sum();
    assert_eq!(chunks, 0, "memory chunks left");
    c.delete_vm(id).await.expect("delete");
    agent.shutdown().await;
}
