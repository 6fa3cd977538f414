//! End to end: a whole host dies with an HA instance whose disk is local to it (issue 14,
//! part 4), in a cloud of two controllers over one PostgreSQL (issue 12), and the controller
//! that received the instance's snapshot replicas dies with them.
//!
//! Two hosts without shared storage; controller 1 runs in `nimbus up`, controller 2 is its
//! child. Controller 1 is frozen (SIGSTOP) until controller 2 runs the replication task, so
//! that the controller receiving the replicas from the host is one a test may kill. Then:
//! - the instance writes marker 1, snapshot s1 is taken; it is replicated (by controller 2)
//!   and copied to controller 1 (`snapshot show`: held by 2 of 2 live controllers);
//! - the instance writes marker 2; controller 1 is frozen again and snapshot s2 is taken
//!   through controller 2, which replicates it: only controller 2 holds it;
//! - the whole host is killed (`Cloud::kill_host`) and controller 2 dies with its disk
//!   (frozen, its replica store removed, killed -9; `nimbus up` restarts it empty); controller
//!   1 is thawed.
//!
//! The instance runs again on the other host from s1, the newest snapshot a live controller
//! holds (s2's only copy died): marker 1 is there, marker 2 is not, and its reason says which
//! snapshot it was, that later changes are lost, and why s2 was not used. Without the copy
//! between controllers no live controller would hold any replica and the restart would fail.
//!
//! A file of its own (not a second cloud in crates/cli/tests/ha.rs): two clouds in one test
//! process would share its pid-based network names. Needs `NIMBUS_TEST_POSTGRES_URL` (CI
//! sets it; `bash scripts/ci-postgres.sh` prints one): fails clearly without it.

use nimbus_api::{ControllerView, InstanceState, SnapshotView};
use nimbus_test_utils::controllers::TestDatabase;
use nimbus_test_utils::guest::*;
use nimbus_test_utils::{wait_until, Cloud, CloudOptions};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_nimbus");

/// The URL of controller 2 (the port after controller 1's).
fn ctl2_url(cloud: &Cloud) -> String {
    let first = cloud.api();
    let (base, port) = first.rsplit_once(':').expect("api with a port");
    let port: u16 = port.parse().expect("port");
    format!("{base}:{}", port + 1)
}

fn ctl2_dir(cloud: &Cloud) -> PathBuf {
    cloud.data_dir().join("controllers").join("ctl2")
}

fn ctl2_pid(cloud: &Cloud) -> Pid {
    let text = std::fs::read_to_string(ctl2_dir(cloud).join("controller.pid")).expect("pid");
    Pid::from_raw(text.trim().parse().expect("a pid"))
}

/// A client of controller 2.
fn ctl2_client(cloud: &Cloud) -> nimbus_client::Client {
    let ca = std::fs::read(cloud.ca_cert()).expect("the cloud's CA");
    nimbus_client::Client::new(&ctl2_url(cloud), Some(cloud.token().expect("token")))
        .with_root_ca(&ca)
        .expect("client of controller 2")
}

/// `nimbus --api <controller 2> ARGS`, which must succeed.
fn via_ctl2(cloud: &Cloud, args: &[&str]) -> String {
    let url = ctl2_url(cloud);
    let mut all = vec!["--api", url.as_str()];
    all.extend_from_slice(args);
    cli_ok(cloud, &all)
}

/// Freezes controller 1 (the `nimbus up` process; its children run on) until controller 2
/// runs the replication task, then thaws it (controller 2 keeps the task while it lives).
async fn move_replication_to_controller_2(cloud: &Cloud) {
    let up = Pid::from_raw(cloud.up_pid().expect("nimbus up runs"));
    kill(up, Signal::SIGSTOP).expect("freeze controller 1");
    let moved = wait_until(
        "controller 2 to take the replication task",
        Duration::from_secs(60),
        Duration::from_millis(500),
        || async {
            let out = cloud
                .cli(&[
                    "--api",
                    &ctl2_url(cloud),
                    "controller",
                    "list",
                    "-o",
                    "json",
                ])
                .ok()?;
            let listed: Vec<ControllerView> = serde_json::from_slice(&out.stdout).ok()?;
            listed
                .iter()
                .any(|c| c.this && c.tasks.iter().any(|t| t == "replication"))
                .then_some(())
        },
    )
    .await;
    kill(up, Signal::SIGCONT).expect("thaw controller 1");
    moved.expect("controller 2 runs the replication");
}

/// Thaws the processes the test froze when it ends, by a panic too (a frozen process
/// would not act on `nimbus up`'s stop and outlive the test).
struct Thaw(Vec<Pid>);

impl Drop for Thaw {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = kill(*pid, Signal::SIGCONT);
        }
    }
}

/// Waits (bounded) until `snapshot show` through `api` says `want` about the replica.
async fn wait_replica(cloud: &Cloud, api: &str, name: &str, want: &str) -> String {
    wait_until(
        &format!("snapshot {name}: {want}"),
        Duration::from_secs(120),
        Duration::from_millis(500),
        || async {
            let out = cloud.cli(&["--api", api, "snapshot", "show", name]).ok()?;
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            text.contains(want).then_some(text)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", cloud.log_tail(30)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_host_s_local_disk_ha_instance_restarts_from_the_newest_replica_a_live_controller_holds(
) {
    let db = TestDatabase::create().expect("PostgreSQL for the two controllers");
    let opts = CloudOptions {
        hosts: 2,
        extra_args: vec![
            "--controllers".into(),
            "2".into(),
            "--database-url".into(),
            db.url.clone(),
            "--lease-ttl".into(),
            "3s".into(),
        ],
    };
    let cloud = Cloud::start(Path::new(BIN), opts)
        .await
        .expect("start the cloud");
    let client = cloud.client().expect("client");
    let up = Pid::from_raw(cloud.up_pid().expect("nimbus up runs"));
    let mut thaw = Thaw(vec![up]);
    move_replication_to_controller_2(&cloud).await;
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
    let api1 = cloud.api();
    let shown = wait_replica(&cloud, &api1, "db2-s1", "held by 2 of 2 live controllers").await;
    println!(
        "first snapshot replicated and copied to both controllers {:.1} s after it was taken\n{shown}",
        taken.elapsed().as_secs_f64()
    );
    exec(&client, "db2", "echo between > /data/marker2 && sync").await;

    // s2 only on controller 2: controller 1 is frozen while it is taken and replicated.
    kill(up, Signal::SIGSTOP).expect("freeze controller 1");
    via_ctl2(
        &cloud,
        &["snapshot", "create", "db2", "--name", "db2-s2", "--wait"],
    );
    let api2 = ctl2_url(&cloud);
    wait_replica(&cloud, &api2, "db2-s2", "replicated  yes").await;

    // The host and controller 2 die; controller 2's disk with them.
    let ctl2 = ctl2_client(&cloud);
    let db2 = instance(&ctl2, "db2").await;
    let dead = db2.host.clone().expect("placed");
    let pid2 = ctl2_pid(&cloud);
    kill(pid2, Signal::SIGSTOP).expect("freeze controller 2");
    let killed = Instant::now();
    let agent = cloud.kill_host(&dead).expect("kill the host");
    thaw.0.push(Pid::from_raw(agent));
    std::fs::remove_dir_all(ctl2_dir(&cloud).join("replicas")).expect("controller 2's disk");
    kill(pid2, Signal::SIGKILL).expect("kill -9 controller 2");
    kill(up, Signal::SIGCONT).expect("thaw controller 1");
    let s2: SnapshotView = json(&cli_ok(
        &cloud,
        &["snapshot", "show", "db2-s2", "-o", "json"],
    ));
    assert!(s2.replicated_at.is_some(), "{s2:?}");

    let back = wait_running_elsewhere(&client, "db2", &dead, Duration::from_secs(180)).await;
    println!(
        "HA restart from a replica held by a surviving controller, host death to guest running \
         elsewhere: {:.1} s",
        killed.elapsed().as_secs_f64()
    );
    let reason = back.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("restarted from snapshot db2-s1 taken at")
            && reason.contains(&format!("on host {dead}; changes after it are lost"))
            && reason.contains("db2-s2")
            && reason.contains("no live controller holds its replica"),
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
    assert_eq!(cloud.qemu_count(&db2.id.to_string()), 1, "one copy");
    // s2 is not on the new host: it says so instead of offering a restore that cannot work.
    let s2: SnapshotView = json(&cli_ok(
        &cloud,
        &["snapshot", "show", "db2-s2", "-o", "json"],
    ));
    assert_eq!(s2.state, nimbus_api::SnapshotState::Error, "{s2:?}");
    let s1: SnapshotView = json(&cli_ok(
        &cloud,
        &["snapshot", "show", "db2-s1", "-o", "json"],
    ));
    assert_eq!(
        (s1.state, s1.host.as_str()),
        (
            nimbus_api::SnapshotState::Available,
            back.host.as_deref().unwrap_or_default()
        ),
        "{s1:?}"
    );
    assert_eq!(instance(&client, "db2").await.state, InstanceState::Running);
    kill(Pid::from_raw(agent), Signal::SIGCONT).expect("thaw the agent");
    drop(thaw);
}
