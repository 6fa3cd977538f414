//! End to end: a whole host dies with an HA instance whose disk is local to it (issue 14,
//! part 4). Two hosts without shared storage; the instance writes a marker, is snapshotted
//! (the snapshot is replicated to the controller in the background: waited for), writes a
//! second marker; then its host is killed (`Cloud::kill_host`). The instance runs again on
//! the other host, restored from that snapshot: the first marker is there, the second is
//! not, and its reason says which snapshot it was and that later changes are lost.
//!
//! A file of its own (not a second cloud in crates/cli/tests/ha.rs): two clouds in one test
//! process would share its pid-based network names.

use nimbus_test_utils::guest::*;
use nimbus_test_utils::{wait_until, Cloud, CloudOptions};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::Path;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_nimbus");

/// An HA instance with a local disk (no shared storage) restarts on the other host from its
/// latest snapshot replicated to the controller: a marker written before the snapshot is
/// there, one written after is not, and the instance says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_host_s_local_disk_ha_instance_restarts_from_its_replicated_snapshot() {
    let opts = CloudOptions {
        hosts: 2,
        extra_args: Vec::new(),
    };
    let cloud = Cloud::start(Path::new(BIN), opts)
        .await
        .expect("start the cloud");
    let client = cloud.client().expect("client");
    cli_ok(
        &cloud,
        &[
            "instance", "create", "db2", "--flavor", "small", "--image", "default", "--ha",
            "restart", "--wait",
        ],
    );
    exec(&client, "db2", "echo before > /data/marker1 && sync").await;
    cli_ok(
        &cloud,
        &["snapshot", "create", "db2", "--name", "db2-s1", "--wait"],
    );
    let taken = Instant::now();
    let shown = wait_until(
        "the snapshot replicated to the controller",
        Duration::from_secs(120),
        Duration::from_millis(500),
        || async {
            let out = cli_ok(&cloud, &["snapshot", "show", "db2-s1"]);
            out.contains("replicated  yes").then_some(out)
        },
    )
    .await
    .expect("replicated");
    println!(
        "replication of the first snapshot done {:.1} s after it was taken\n{shown}",
        taken.elapsed().as_secs_f64()
    );
    exec(&client, "db2", "echo after > /data/marker2 && sync").await;

    let db = instance(&client, "db2").await;
    let dead = db.host.clone().expect("placed");
    let killed = Instant::now();
    let agent = cloud.kill_host(&dead).expect("kill the host");
    let back = wait_running_elsewhere(&client, "db2", &dead, Duration::from_secs(150)).await;
    println!(
        "HA restart from a replicated snapshot, host death to guest running elsewhere: {:.1} s",
        killed.elapsed().as_secs_f64()
    );
    let reason = back.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("restarted from snapshot db2-s1 taken at")
            && reason.contains(&format!("on host {dead}; changes after it are lost")),
        "{reason}"
    );
    let show = cli_ok(&cloud, &["instance", "show", "db2"]);
    assert!(show.contains("changes after it are lost"), "{show}");
    assert_eq!(
        exec(&client, "db2", "cat /data/marker1").await.trim(),
        "before"
    );
    assert_eq!(
        exec(
            &client,
            "db2",
            "cat /data/marker2 2>/dev/null || echo absent"
        )
        .await
        .trim(),
        "absent"
    );
    assert_eq!(cloud.qemu_count(&db.id.to_string()), 1, "one copy");
    kill(Pid::from_raw(agent), Signal::SIGCONT).expect("thaw the agent");
}
