//! Live migration between two in-process agents on 127.0.0.1 (separate state directories),
//! with the real default guest image (skipped, saying so, when it is not built):
//! shared disk (with agent restarts on both sides), disk mirror, a busy guest, post-copy,
//! multifd, cancel (with a source agent restart mid-way), a target killed mid-way, and
//! undoing a completed migration.
//!
//! The tests run one at a time (each boots two QEMUs under TCG) and print the measured
//! downtime (source STOP to target RESUME) and heartbeat gap (last beat on the source to
//! first beat on the target).

#[path = "../common/mod.rs"]
mod common;
mod support;

use common::{qemu_pids_for, wait_for, wait_pid_gone, TestAgent};
use nimbus_agent_api::{DiskTransfer, MigrationPhase, MigrationPolicy, VmRunState};
use std::time::Duration;
use support::*;

/// Shared disk; both agents restart mid-way (a waiting target and a migrated source are
/// re-adopted as such); the source is deleted keeping the disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_disk_migration() {
    let _one = SERIAL.lock().await;
    let Some(mut pair) = Pair::start("shared_disk_migration").await else {
        return;
    };
    let spec = pair.boot_on_a("mig-shared").await;
    let id = spec.id;
    exec(&pair.a.client, id, "echo x > /data/f; sync").await;
    let before = uptime(&pair.a.client, id).await;
    let disk = pair.a.client.vm(id).await.expect("status").disk_path;
    let disk = disk.expect("disk path on A");
    let ready = incoming(&pair, &spec, DiskTransfer::Shared { path: disk.clone() }).await;
    let on_b = pair.b.client.vm(id).await.expect("status on B");
    assert_eq!(on_b.disk_path.as_deref(), Some(disk.as_path()));

    // B's agent restarts while its QEMU waits: still waiting, not running nor crashed.
    let waiting_pid = on_b.pid.expect("pid on B");
    let dir = pair.state_dir("b");
    pair.b.shutdown().await;
    pair.b = TestAgent::start(&dir).await;
    let readopted = pair.b.client.vm(id).await.expect("status on B");
    assert_eq!(
        (readopted.state, readopted.incoming, readopted.pid),
        (VmRunState::Starting, true, Some(waiting_pid))
    );

    let done = migrate(&pair, id, ready).await;
    check_arrival(&pair, id, &done).await;
    assert_eq!(exec(&pair.b.client, id, "cat /data/f").await, "x\n");
    let after = uptime(&pair.b.client, id).await;
    assert!(
        after > before,
        "uptime {before} -> {after}: the guest rebooted"
    );

    // A's agent restarts: the paused source stays migrated, its record stays.
    let dir = pair.state_dir("a");
    pair.a.shutdown().await;
    pair.a = TestAgent::start(&dir).await;
    let source = pair.a.client.vm(id).await.expect("status on A");
    assert_eq!(source.state, VmRunState::Migrated, "{source:?}");
    let record = pair.a.client.migration(id).await.expect("progress");
    assert_eq!(record.phase, MigrationPhase::Completed);

    // Deleting the source keeps the shared disk, which B goes on using.
    let a_pid = source.pid.expect("pid on A");
    pair.a
        .client
        .remove_vm(id, true)
        .await
        .expect("delete on A");
    wait_pid_gone(a_pid).await;
    assert!(disk.is_file(), "the shared disk survives");
    exec(&pair.b.client, id, "echo y > /data/g; sync").await;
    assert_eq!(
        exec(&pair.b.client, id, "cat /data/f /data/g").await,
        "x\ny\n"
    );
    let still = pair.b.client.vm(id).await.expect("status on B");
    assert!(
        still.state == VmRunState::Running && beating(&still),
        "{still:?}"
    );
    pair.finish(id).await;
}

/// Local disks: the disk is mirrored to a fresh overlay on B over NBD.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrored_disk_migration() {
    let _one = SERIAL.lock().await;
    let Some(pair) = Pair::start("mirrored_disk_migration").await else {
        return;
    };
    let spec = pair.boot_on_a("mig-mirror").await;
    let id = spec.id;
    exec(
        &pair.a.client,
        id,
        "dd if=/dev/urandom of=/data/blob bs=1M count=8 2>/dev/null; echo x > /data/f; \
         md5sum /data/blob > /data/sum; sync",
    )
    .await;
    let before = uptime(&pair.a.client, id).await;
    let ready = incoming(&pair, &spec, DiskTransfer::Mirror).await;
    let nbd = ready.nbd.clone().expect("NBD export");
    let done = migrate(&pair, id, ready).await;
    let arrived = check_arrival(&pair, id, &done).await;
    // The target closed its NBD server once the guest resumed.
    let mut closed = false;
    for _ in 0..50 {
        if tokio::net::TcpStream::connect((nbd.host.as_str(), nbd.port))
            .await
            .is_err()
        {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(closed, "the NBD server still listens on {}", nbd.port);
    let own = pair.state_dir("b").join(format!("vms/{id}/disk.qcow2"));
    assert_eq!(arrived.disk_path.as_deref(), Some(own.as_path()));
    assert_eq!(exec(&pair.b.client, id, "cat /data/f").await, "x\n");
    // The data written before the migration is on B's own disk, intact: drop the guest's
    // page cache so that it is read from the disk.
    exec(
        &pair.b.client,
        id,
        "echo 3 > /proc/sys/vm/drop_caches; md5sum -c /data/sum",
    )
    .await;
    assert!(uptime(&pair.b.client, id).await > before);
    // The source goes entirely (its disk too): B has its own copy.
    pair.a.client.delete_vm(id).await.expect("delete on A");
    assert!(!pair.state_dir("a").join(format!("vms/{id}")).exists());
    exec(
        &pair.b.client,
        id,
        "md5sum -c /data/sum; echo z > /data/z; sync",
    )
    .await;
    pair.finish(id).await;
}

/// A guest rewriting 64 MiB at up to 100 MiB/s converges with the default policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_guest_converges() {
    let _one = SERIAL.lock().await;
    let Some(pair) = Pair::start("busy_guest_converges").await else {
        return;
    };
    let spec = pair.boot_on_a("mig-busy").await;
    let id = spec.id;
    let load = start_dirty_mem(&pair, id).await;
    let disk = pair.a.client.vm(id).await.expect("status").disk_path;
    let ready = incoming(
        &pair,
        &spec,
        DiskTransfer::Shared {
            path: disk.expect("disk path"),
        },
    )
    .await;
    let done = migrate(&pair, id, ready).await;
    assert!(done.round >= 2, "{done:?}");
    check_arrival(&pair, id, &done).await;
    exec(&pair.b.client, id, &format!("kill -0 {load}")).await;
    pair.finish(id).await;
}

/// A slow migration (5 MiB/s) is cancelled mid-way: the VM runs on at A.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_mid_migration() {
    let _one = SERIAL.lock().await;
    let Some(mut pair) = Pair::start("cancel_mid_migration").await else {
        return;
    };
    let spec = pair.boot_on_a("mig-cancel").await;
    let id = spec.id;
    let ready = incoming(&pair, &spec, DiskTransfer::Mirror).await;
    let b_pid = pair.b.client.vm(id).await.expect("B").pid.expect("pid");
    start_slow(&pair, id, ready).await;
    // A's agent restarts mid-way: the new one follows the migration QEMU goes on with.
    let dir = pair.state_dir("a");
    pair.a.shutdown().await;
    pair.a = TestAgent::start(&dir).await;
    let resumed = pair.a.client.migration(id).await.expect("progress");
    assert_eq!(resumed.phase, MigrationPhase::PreCopy, "{resumed:?}");
    let sent = resumed.transferred_bytes;
    wait_progress(&pair.a.client, id, "more bytes sent", |p| {
        p.transferred_bytes > sent
    })
    .await;
    let cancelled = pair.a.client.migration_cancel(id).await.expect("cancel");
    assert_eq!(cancelled.phase, MigrationPhase::Cancelled, "{cancelled:?}");
    let again = pair
        .a
        .client
        .migration_cancel(id)
        .await
        .expect("cancel again");
    assert_eq!(again.phase, MigrationPhase::Cancelled);
    still_runs_on_a(&pair, id).await;
    // The target's QEMU lost its source: it failed, and is deleted.
    let failed = wait_for(
        &pair.b.client,
        id,
        Duration::from_secs(30),
        "B failed",
        |s| s.state == VmRunState::Crashed,
    )
    .await;
    assert!(
        failed
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("incoming migration failed")),
        "{failed:?}"
    );
    pair.b.client.delete_vm(id).await.expect("delete on B");
    wait_pid_gone(b_pid).await;
    assert!(qemu_pids_for(&pair.state_dir("b")).is_empty());
    pair.finish(id).await;
}

/// A guest that dirties memory faster than a 30 MiB/s cap lets pre-copy converge, with
/// post-copy allowed and no auto-converge: the policy switches to post-copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postcopy_rescues_a_stalled_migration() {
    let _one = SERIAL.lock().await;
    let Some(pair) = Pair::start("postcopy_rescues_a_stalled_migration").await else {
        return;
    };
    let spec = pair.boot_on_a("mig-postcopy").await;
    let id = spec.id;
    let load = start_dirty_mem(&pair, id).await;
    let disk = pair.a.client.vm(id).await.expect("status").disk_path;
    let shared = DiskTransfer::Shared {
        path: disk.expect("disk path"),
    };
    let ready = incoming(&pair, &spec, shared).await;
    let policy = MigrationPolicy {
        max_bandwidth_mib_s: Some(30),
        auto_converge: false,
        allow_postcopy: true,
        timeout_secs: 150,
        ..MigrationPolicy::default()
    };
    let done = migrate_with(&pair, id, ready, policy).await;
    assert!(
        done.escalations.iter().any(|e| e.contains("post-copy")),
        "{done:?}"
    );
    check_arrival(&pair, id, &done).await;
    exec(&pair.b.client, id, &format!("kill -0 {load}")).await;
    pair.finish(id).await;
}

/// Several channels (multifd): both ends are told by the policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multifd_migration() {
    let _one = SERIAL.lock().await;
    let Some(pair) = Pair::start("multifd_migration").await else {
        return;
    };
    let spec = pair.boot_on_a("mig-multifd").await;
    let id = spec.id;
    let policy = MigrationPolicy {
        multifd_channels: Some(2),
        ..MigrationPolicy::default()
    };
    let disk = pair.a.client.vm(id).await.expect("status").disk_path;
    let shared = DiskTransfer::Shared {
        path: disk.expect("disk path"),
    };
    let ready = incoming_with(&pair, &spec, shared, policy.clone()).await;
    let done = migrate_with(&pair, id, ready, policy).await;
    check_arrival(&pair, id, &done).await;
    pair.finish(id).await;
}

/// The target's QEMU is killed mid-way: the source reports failed, the VM runs on at A.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_killed_mid_migration() {
    let _one = SERIAL.lock().await;
    let Some(pair) = Pair::start("target_killed_mid_migration").await else {
        return;
    };
    let spec = pair.boot_on_a("mig-kill").await;
    let id = spec.id;
    let ready = incoming(&pair, &spec, DiskTransfer::Mirror).await;
    let b_pid = pair.b.client.vm(id).await.expect("B").pid.expect("pid");
    start_slow(&pair, id, ready).await;
    kill9(b_pid);
    let failed = wait_progress(&pair.a.client, id, "failed", |p| p.phase.is_final()).await;
    assert_eq!(failed.phase, MigrationPhase::Failed, "{failed:?}");
    eprintln!("source reports: {:?}", failed.error);
    assert!(failed.error.is_some());
    still_runs_on_a(&pair, id).await;
    // The mirror is gone: the disk takes writes as before.
    let out = exec(&pair.a.client, id, "echo w > /data/w; sync; cat /data/w").await;
    assert_eq!(out, "w\n");
    let crashed = wait_for(
        &pair.b.client,
        id,
        Duration::from_secs(10),
        "B crashed",
        |s| s.state == VmRunState::Crashed,
    )
    .await;
    assert!(crashed.reason.is_some());
    pair.finish(id).await;
}

/// A completed migration whose target then died is undone by a cancel: `cont` on A.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_after_completion_resumes_the_source() {
    let _one = SERIAL.lock().await;
    let Some(pair) = Pair::start("cancel_after_completion_resumes_the_source").await else {
        return;
    };
    let spec = pair.boot_on_a("mig-undo").await;
    let id = spec.id;
    let disk = pair.a.client.vm(id).await.expect("A").disk_path;
    let shared = DiskTransfer::Shared {
        path: disk.expect("disk path"),
    };
    let ready = incoming(&pair, &spec, shared).await;
    migrate(&pair, id, ready).await;
    let b = wait_for(&pair.b.client, id, Duration::from_secs(30), "B runs", |s| {
        s.state == VmRunState::Running
    })
    .await;
    // While B holds the shared disk, A cannot take it back.
    let refused = pair.a.client.migration_cancel(id).await;
    assert!(refused.is_err(), "{refused:?}");
    let b_pid = b.pid.expect("pid");
    kill9(b_pid);
    wait_pid_gone(b_pid).await;
    let undone = pair.a.client.migration_cancel(id).await.expect("cancel");
    assert_eq!(undone.phase, MigrationPhase::Cancelled);
    still_runs_on_a(&pair, id).await;
    pair.finish(id).await;
}
