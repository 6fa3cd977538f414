//! `nimbus up --controllers 3` through the real binary (issue 12): three controllers over one
//! PostgreSQL, one host agent (no guest: the controllers are the subject), the CLI given
//! several URLs moving to a live one when the first was killed -9, each background task
//! run by exactly one controller, and `--controllers 2` refused without PostgreSQL.
//!
//! Needs `NIMBUS_TEST_POSTGRES_URL` (CI sets it; `bash scripts/ci-postgres.sh` prints one):
//! fails clearly without it.

use nimbus_api::ControllerView;
use nimbus_test_utils::controllers::TestDatabase;
use nimbus_test_utils::{Cloud, CloudOptions};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_nimbus");
const TASKS: [&str; 5] = [
    "autoscaler",
    "firewall_sync",
    "host_liveness",
    "reconciler",
    "retention",
];

fn controllers(cloud: &Cloud, api: &str) -> Vec<ControllerView> {
    let out = cloud
        .cli(&["--api", api, "controller", "list", "-o", "json"])
        .expect("nimbus controller list");
    assert!(
        out.status.success(),
        "nimbus controller list --api {api}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("a JSON list of controllers")
}

/// The port of controller `i` (1-based): the next ports after controller 1's.
fn url_of(cloud: &Cloud, i: u16) -> String {
    let first = cloud.api();
    let (base, port) = first.rsplit_once(':').expect("api with a port");
    let port: u16 = port.parse().expect("port");
    format!("{base}:{}", port + i - 1)
}

#[test]
fn several_controllers_without_postgresql_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(BIN)
        .args(["up", "--controllers", "2", "--no-netns", "--data-dir"])
        .arg(dir.path())
        .env_remove("NIMBUS_DATABASE_URL")
        .output()
        .expect("nimbus up");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--controllers 2 needs one PostgreSQL database")
            && err.contains("--database-url postgres://"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn three_controllers_share_the_work_and_the_cli_moves_past_a_dead_one() {
    let db = TestDatabase::create().expect("PostgreSQL for the several-controllers tests");
    let opts = CloudOptions {
        hosts: 1,
        extra_args: vec![
            "--controllers".into(),
            "3".into(),
            "--database-url".into(),
            db.url.clone(),
            "--lease-ttl".into(),
            "3s".into(),
        ],
    };
    let cloud = Cloud::start(std::path::Path::new(BIN), opts)
        .await
        .expect("nimbus up --controllers 3");
    let all = format!(
        "{},{},{}",
        url_of(&cloud, 1),
        url_of(&cloud, 2),
        url_of(&cloud, 3)
    );
    // Three live controllers; every background task run by exactly one of them (the
    // extra controllers may still be starting: bounded wait).
    let deadline = Instant::now() + Duration::from_secs(60);
    let listed = loop {
        let listed = controllers(&cloud, &all);
        let holders: usize = TASKS
            .iter()
            .map(|t| {
                listed
                    .iter()
                    .filter(|c| c.tasks.iter().any(|x| x == t))
                    .count()
            })
            .sum();
        if listed.len() == 3 && holders == TASKS.len() {
            break listed;
        }
        assert!(
            Instant::now() < deadline,
            "{listed:?}\n{}",
            cloud.log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    for task in TASKS {
        let n = listed
            .iter()
            .filter(|c| c.tasks.iter().any(|t| t == task))
            .count();
        assert_eq!(n, 1, "{task}: {listed:?}");
    }
    // kill -9 controller 2; a CLI told to use it first moves on to controller 3.
    let pid_file = cloud
        .data_dir()
        .join("controllers")
        .join("ctl2")
        .join("controller.pid");
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .expect("controller 2's pid")
        .trim()
        .parse()
        .expect("a pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9 controller 2");
    let two_three = format!("{},{}", url_of(&cloud, 2), url_of(&cloud, 3));
    let started = Instant::now();
    let mut answered: HashMap<String, usize> = HashMap::new();
    let left = loop {
        let listed = controllers(&cloud, &two_three);
        for c in listed.iter().filter(|c| c.this) {
            *answered.entry(c.url.clone()).or_default() += 1;
        }
        // Controller 2 drops out of the list once its heartbeat is older than the TTL.
        if listed.len() == 2 {
            break listed;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "controller 2 still listed: {listed:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(
        answered.keys().cloned().collect::<Vec<_>>(),
        vec![url_of(&cloud, 3)],
        "only controller 3 answered"
    );
    assert!(!left.iter().any(|c| c.url == url_of(&cloud, 2)), "{left:?}");
    eprintln!(
        "controller 2 left the list {:.1} s after kill -9",
        started.elapsed().as_secs_f64()
    );
}
