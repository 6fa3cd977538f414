//! A failure injected at each step of taking, restoring and deleting a snapshot leaves the
//! VM and its disk as they were and nothing behind (after the controller's undo: deleting
//! the half-made snapshot). Failures are injected with `NIMBUS_FAILPOINTS` (see
//! `nimbus_agent::snapshot::failpoint`); the VM is a real default guest (skipped, saying so,
//! when the image is not built). Own test binary: the variable is process-wide.

mod common;

use common::{wait_for, QemuReaper, TestAgent};
use nimbus_agent_api::{
    AgentClient, DiskSpec, RestoreRequest, SnapshotRequest, VmRunState, VmSpec,
};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;
use uuid::Uuid;

async fn sh(c: &AgentClient, id: Uuid, command: &str) -> String {
    common::exec(c, id, command).await.trim().to_string()
}

/// What the snapshot machinery has on disk: layer files, snapshot dirs, memory chunks.
#[derive(Debug, PartialEq)]
struct Footprint {
    layers: usize,
    snapshots: BTreeSet<String>,
    chunks: BTreeSet<String>,
}

fn names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|e| {
            e.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn footprint(state: &Path, vm: &Path) -> Footprint {
    let root = usize::from(vm.join("disk.qcow2").is_file());
    let chunks = names(&state.join("chunks"))
        .iter()
        .flat_map(|d| names(&state.join("chunks").join(d)))
        .collect();
    Footprint {
        layers: root + names(&vm.join("layers")).len(),
        snapshots: names(&vm.join("snapshots")),
        chunks,
    }
}

fn inject(point: Option<&str>) {
    match point {
        Some(p) => std::env::set_var("NIMBUS_FAILPOINTS", p),
        None => std::env::remove_var("NIMBUS_FAILPOINTS"),
    }
}

/// Takes memory snapshot `sid` while the guest writes to its disk in a loop, each turn a new
/// file of 4 KiB (blocks written once, never rewritten from the guest's cache), with
/// `failpoint` injected. Answers the snapshot and the writer's pid (ended by then).
async fn snapshot_while_writing(
    c: &AgentClient,
    id: Uuid,
    sid: Uuid,
    failpoint: &str,
) -> (nimbus_agent_api::SnapshotResult, String) {
    let writer = "(i=0; while :; do i=$((i+1)); dd if=/dev/urandom of=/data/w.$i bs=4k count=1 \
         2>/dev/null; sync; done) </dev/null >/dev/null 2>&1 & echo $!";
    let pid = sh(c, id, writer).await;
    inject(Some(failpoint));
    let request = SnapshotRequest {
        snapshot_id: sid,
        memory: true,
    };
    let taken = c.snapshot(id, &request).await;
    inject(None);
    sh(c, id, &format!("kill {pid}")).await;
    let taken = taken.unwrap_or_else(|e| panic!("snapshot with {failpoint}: {e}"));
    (taken, pid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_failures_leave_nothing_behind() {
    let Some(image) = common::default_image("injected_failures_leave_nothing_behind") else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let _reaper = QemuReaper(tmp.path().to_path_buf());
    let state = tmp.path().join("state");
    let agent = TestAgent::start(&state).await;
    let c = agent.client.clone();
    let id = Uuid::new_v4();
    let vm = state.join("vms").join(id.to_string());
    let spec = VmSpec {
        id,
        name: "fail-guest".into(),
        vcpus: 1,
        memory_mib: 256,
        image: image.guest_image(),
        disk: DiskSpec { size_gib: 1 },
        ha: false,
        nics: Vec::new(),
        seed: None,
    };
    c.define_vm(&spec).await.expect("define");
    c.start_vm(id).await.expect("start");
    wait_for(&c, id, Duration::from_secs(90), "ready", |s| s.guest_ready).await;
    sh(&c, id, "echo kept > /data/keep.txt; sync").await;
    let s0 = Uuid::new_v4();
    let req = |sid| SnapshotRequest {
        snapshot_id: sid,
        memory: true,
    };
    c.snapshot(id, &req(s0)).await.expect("snapshot s0");
    sh(&c, id, "echo later > /data/later.txt; sync").await;
    let before = footprint(&state, &vm);
    let pid = c.vm(id).await.expect("vm").pid;

    for point in [
        "take.after_new_layer",
        "take.in_pause",
        "take.after_pause",
        "take.before_manifest",
    ] {
        let sid = Uuid::new_v4();
        inject(Some(point));
        let err = c.snapshot(id, &req(sid)).await.expect_err(point);
        inject(None);
        assert!(err.to_string().contains("injected"), "{point}: {err}");
        // The controller's undo of a failed snapshot step.
        c.delete_snapshot(id, sid).await.expect("undo");
        let now = c.vm(id).await.expect("vm");
        assert_eq!((now.state, now.pid), (VmRunState::Running, pid), "{point}");
        assert_eq!(
            footprint(&state, &vm),
            before,
            "{point} left something behind"
        );
        assert_eq!(
            sh(&c, id, "cat /data/keep.txt /data/later.txt").await,
            "kept\nlater"
        );
        sh(&c, id, &format!("echo {point} > /data/write-test; sync")).await;
    }

    // A guest that writes to its disk while QEMU takes its memory image (its own pause) is
    // seen by its disk's write counters: nothing is kept, and the snapshot is taken again,
    // stopping first; the VM runs on in the same QEMU. Seen before the disk switched (the
    // window widened by a second here), the switch is not made:
    let layers_before = footprint(&state, &vm).layers;
    let s2 = Uuid::new_v4();
    let (taken, _) = snapshot_while_writing(&c, id, s2, "take.disk_check_late").await;
    assert_eq!(taken.attempts_undone, 1, "{taken:?}");
    assert_eq!(footprint(&state, &vm).layers, layers_before + 1);
    c.delete_snapshot(id, s2).await.expect("delete s2");
    // ...seen after it (the guest writing during a second after the switch), the new layer
    // is merged back while the guest runs: what it wrote there is kept, on disk.
    let s1 = Uuid::new_v4();
    sh(&c, id, "echo at-s1 > /data/s1.txt; sync").await;
    let (taken, pid_of_writer) =
        snapshot_while_writing(&c, id, s1, "take.disk_written_at_switch").await;
    assert_eq!(taken.attempts_undone, 1, "{taken:?}");
    let now = c.vm(id).await.expect("vm");
    assert_eq!((now.state, now.pid), (VmRunState::Running, pid));
    // The new layer of the undone attempt is gone (one layer more: the retry's), and what the
    // guest wrote into it is on the disk: read back from it, past the guest's cache.
    assert_eq!(footprint(&state, &vm).layers, layers_before + 1);
    assert_eq!(
        sh(
            &c,
            id,
            "cd /data && md5sum w.* > /tmp/sums && sync && echo 3 > /proc/sys/vm/drop_caches \
             && md5sum -c /tmp/sums > /dev/null && echo intact $(ls w.* | wc -l)"
        )
        .await
        .split(' ')
        .next(),
        Some("intact")
    );
    sh(&c, id, "echo after-s1 > /data/s1.txt; sync").await;
    c.restore_snapshot(id, s1, &RestoreRequest { step_clock: true })
        .await
        .expect("restore s1");
    // The writer ran at s1's instant: it runs again, and is ended again.
    sh(&c, id, &format!("kill {pid_of_writer}")).await;
    assert_eq!(
        sh(&c, id, "cat /data/s1.txt /data/keep.txt").await,
        "at-s1\nkept"
    );
    // Deleting s1 merges its layer into the restored top while the VM runs; the kill below
    // (restore.after_kill) then finds that data only if the merge was flushed (QEMU's
    // `block-stream` leaves it in its qcow2 cache).
    c.delete_snapshot(id, s1).await.expect("delete s1");
    let pid = c.vm(id).await.expect("vm").pid;
    let before = footprint(&state, &vm);

    // Restore fails before the VM is touched: it runs on, untouched.
    inject(Some("restore.after_assemble"));
    let err = c
        .restore_snapshot(id, s0, &RestoreRequest { step_clock: true })
        .await
        .expect_err("restore.after_assemble");
    inject(None);
    assert!(err.to_string().contains("injected"), "{err}");
    let now = c.vm(id).await.expect("vm");
    assert_eq!((now.state, now.pid), (VmRunState::Running, pid));
    assert_eq!(footprint(&state, &vm), before);

    // Past its point of no return (the old QEMU is gone) the VM is left crashed, its disk as
    // before the restore, nothing extra on disk; a start boots that disk.
    inject(Some("restore.after_kill"));
    let err = c
        .restore_snapshot(id, s0, &RestoreRequest { step_clock: true })
        .await
        .expect_err("restore.after_kill");
    inject(None);
    assert!(err.to_string().contains("injected"), "{err}");
    let now = c.vm(id).await.expect("vm");
    assert_eq!(now.state, VmRunState::Crashed);
    assert!(
        now.reason
            .as_deref()
            .unwrap_or("")
            .contains("disk is as before"),
        "{:?}",
        now.reason
    );
    assert_eq!(footprint(&state, &vm), before);
    c.start_vm(id).await.expect("start");
    wait_for(&c, id, Duration::from_secs(90), "ready", |s| s.guest_ready).await;
    // s1.txt was in s1's layer, merged into this disk when s1 was deleted.
    assert_eq!(
        sh(&c, id, "cat /data/later.txt /data/s1.txt").await,
        "later\nat-s1"
    );

    // A delete that fails half-way completes when retried.
    inject(Some("delete.after_merge"));
    c.delete_snapshot(id, s0)
        .await
        .expect_err("delete.after_merge");
    inject(None);
    c.delete_snapshot(id, s0).await.expect("delete retried");
    let after = footprint(&state, &vm);
    assert!(
        after.snapshots.is_empty() && after.chunks.is_empty(),
        "{after:?}"
    );
    assert_eq!(sh(&c, id, "cat /data/keep.txt").await, "kept");
    c.delete_vm(id).await.expect("delete");
    agent.shutdown().await;
}
