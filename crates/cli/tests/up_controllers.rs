//! `nimbus up --controllers 3` through the real binary (issue 12): three controllers over one
//! PostgreSQL and two host agents: each background task run by exactly one controller;
//! creates of real guests racing through all three for a host's last slots (exactly its
//! room succeed); the CLI given several URLs moving to a live one when the first was killed
//! -9; a real guest's create finished by another controller after its own was killed -9
//! mid-boot, and a live migration after its controller was killed -9 mid-copy (one QEMU,
//! capacity counted once); each killed controller restarted by `nimbus up` and serving
//! again within a bound; `--controllers 2` refused without PostgreSQL.
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
async fn three_controllers_carry_on_after_kill_9() {
    let db = TestDatabase::create().expect("PostgreSQL for the several-controllers tests");
    let opts = CloudOptions {
        hosts: 2,
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
    last_slots_across_controllers(&cloud).await;
    let third = this_controller(&cloud, 3);
    create_survives_its_controller(&cloud).await;
    killed_controller_comes_back(&cloud, 3, &third);
    cli_moves_past_a_dead_controller(&cloud, 2);
    let second = this_controller(&cloud, 2);
    migration_survives_its_controller(&cloud).await;
    killed_controller_comes_back(&cloud, 2, &second);
    let live = controllers(&cloud, &url_of(&cloud, 1));
    assert_eq!(live.len(), 3, "controllers 2 and 3 restarted: {live:?}");
}

/// The controller that answers at controller `i`'s URL.
fn this_controller(cloud: &Cloud, i: u16) -> ControllerView {
    controllers(cloud, &url_of(cloud, i))
        .into_iter()
        .find(|c| c.this)
        .expect("the answering controller is listed")
}

/// Controller `i` (`before`) was killed -9: `nimbus up` restarts it (a log line says so),
/// and within a bound it serves again at its URL as a new controller, while `before` drops
/// out of the list once its heartbeat is older than the lease.
fn killed_controller_comes_back(cloud: &Cloud, i: u16, before: &ControllerView) {
    let started = Instant::now();
    loop {
        // Through controller 1: controller i's URL refuses connections until it is back.
        let listed = controllers(cloud, &url_of(cloud, 1));
        let back = listed
            .iter()
            .any(|c| c.url == before.url && c.id != before.id);
        let gone = !listed.iter().any(|c| c.id == before.id);
        if back && gone {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "controller {i} not back within 30 s: {listed:?}\n{}",
            cloud.log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let now = this_controller(cloud, i);
    assert_ne!(now.id, before.id, "a new process serves at {}", before.url);
    eprintln!(
        "controller {i} back and serving ({:.1} s into this check; the kill was earlier)",
        started.elapsed().as_secs_f64()
    );
    assert!(
        cloud
            .log_tail(usize::MAX)
            .contains("controller exited; restarting it"),
        "nimbus up says it restarts the controller:\n{}",
        cloud.log_tail(40)
    );
}

/// A CLI told to use a dead controller first (an address where none listens any more, as a
/// controller killed -9 leaves it) moves on to the live one `alive`.
fn cli_moves_past_a_dead_controller(cloud: &Cloud, alive: u16) {
    let urls = format!("{},{}", url_of(cloud, 4), url_of(cloud, alive));
    let mut answered: HashMap<String, usize> = HashMap::new();
    for _ in 0..3 {
        for c in controllers(cloud, &urls).iter().filter(|c| c.this) {
            *answered.entry(c.url.clone()).or_default() += 1;
        }
    }
    assert_eq!(
        answered.into_iter().collect::<Vec<_>>(),
        vec![(url_of(cloud, alive), 3)],
        "only the live controller answered"
    );
}

/// A live migration of a real guest started through controller 2, which is killed -9 while
/// the memory is copied: controller 1 takes it over and ends it (finished, or unwound with
/// the VM where it was); the VM runs in exactly one place, its capacity counted once.
async fn migration_survives_its_controller(cloud: &Cloud) {
    let ctl2 = client_of(cloud, 2);
    let before = ctl2.instance("survivor").await.expect("instance");
    let op = ctl2
        .migrate_instance("survivor", &nimbus_api::MigrateInstance::default())
        .await
        .expect("migration accepted by controller 2");
    let id = op.id.to_string();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let now = ctl2.operation(&id).await.expect("operation");
        let copying = now
            .steps
            .iter()
            .any(|s| s.name == "transfer" && s.state == nimbus_api::StepState::Running);
        if copying {
            break;
        }
        assert!(
            now.state == nimbus_api::OperationState::Running,
            "the migration ended before the kill: {now:?}"
        );
        assert!(
            Instant::now() < deadline,
            "the transfer never started: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid_of(cloud, 2)),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9 controller 2");
    let killed = Instant::now();
    let ctl1 = cloud.client().expect("client of controller 1");
    let done = ctl1
        .wait_operation(&id, Duration::from_secs(180), |_| {})
        .await
        .expect("the migration ends");
    eprintln!(
        "migration ended ({:?}) {:.1} s after kill -9 of its controller",
        done.state,
        killed.elapsed().as_secs_f64()
    );
    let inst = ctl1.instance("survivor").await.expect("instance");
    assert_eq!(
        inst.state,
        nimbus_api::InstanceState::Running,
        "{inst:?} {done:?}"
    );
    if done.state != nimbus_api::OperationState::Succeeded {
        assert_eq!(
            inst.host, before.host,
            "unwound: the VM stays where it was: {done:?}"
        );
    }
    assert_eq!(
        cloud.qemu_count(&inst.id.to_string()),
        1,
        "one QEMU: {done:?}"
    );
    let hosts = ctl1.list_hosts().await.expect("hosts");
    let held: (u32, u64) = hosts.iter().fold((0, 0), |(n, m), h| {
        (n + h.instances, m + h.memory_mib_allocated)
    });
    assert_eq!(held, (1, 256), "capacity counted once: {hosts:?}");
    let out = cloud
        .cli(&["instance", "delete", "survivor", "--wait"])
        .expect("nimbus instance delete");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A client of controller `i`.
fn client_of(cloud: &Cloud, i: u16) -> nimbus_client::Client {
    let ca = std::fs::read(cloud.ca_cert()).expect("the cloud's CA");
    let token = cloud.token().expect("admin token");
    nimbus_client::Client::new(&url_of(cloud, i), Some(token))
        .with_root_ca(&ca)
        .expect("client of a controller")
}

/// Six creates of real guests sent at once, two to each controller, for two hosts with room
/// for two each (2 CPUs x 4 overcommit = 8 vCPUs, 3 vCPUs each): exactly four run, the
/// others are refused for capacity, and each host holds exactly two.
async fn last_slots_across_controllers(cloud: &Cloud) {
    let out = cloud
        .cli(&[
            "flavor",
            "create",
            "wide",
            "--vcpus",
            "3",
            "--memory-mib",
            "256",
            "--disk-gib",
            "1",
        ])
        .expect("nimbus flavor create");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let clients: Vec<_> = (1..=3).map(|i| client_of(cloud, i)).collect();
    let creates = (0..6).map(|k| {
        let client = clients[k % 3].clone();
        async move {
            let req = nimbus_api::CreateInstance {
                name: format!("race{k}"),
                flavor: Some("wide".into()),
                image: Some("default".into()),
                ..Default::default()
            };
            match client.create_instance(&req).await {
                Ok(op) => {
                    let op = client
                        .wait_operation(&op.id.to_string(), Duration::from_secs(180), |_| {})
                        .await
                        .expect("the create ends");
                    (op.state == nimbus_api::OperationState::Succeeded, op.error)
                }
                Err(e) => (false, Some(e.to_string())),
            }
        }
    });
    let results = futures::future::join_all(creates).await;
    let ran = results.iter().filter(|(ok, _)| *ok).count();
    assert_eq!(ran, 4, "exactly the hosts' room: {results:?}");
    for (_, why) in results.iter().filter(|(ok, _)| !ok) {
        let why = why.as_deref().unwrap_or_default();
        assert!(
            why.contains("vCPU") || why.contains("room") || why.contains("capacity"),
            "refused for capacity: {why}"
        );
    }
    for host in clients[0].list_hosts().await.expect("hosts") {
        assert_eq!(
            (host.instances, host.vcpus_allocated),
            (2, 6),
            "each host holds exactly two: {host:?}"
        );
    }
    for k in 0..6 {
        let name = format!("race{k}");
        if clients[0].instance(&name).await.is_ok() {
            let out = cloud
                .cli(&["instance", "delete", &name, "--wait"])
                .expect("nimbus instance delete");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

fn pid_of(cloud: &Cloud, i: u16) -> i32 {
    let pid_file = cloud
        .data_dir()
        .join("controllers")
        .join(format!("ctl{i}"))
        .join("controller.pid");
    std::fs::read_to_string(&pid_file)
        .expect("the controller's pid")
        .trim()
        .parse()
        .expect("a pid")
}

/// A real guest's create accepted by controller 3, which is killed -9 while the guest
/// boots: controller 1 takes the operation over within the lease TTL and a scan, re-runs
/// the step in flight, and the instance runs once: one QEMU, its memory counted once.
async fn create_survives_its_controller(cloud: &Cloud) {
    let ctl3 = client_of(cloud, 3);
    let op = ctl3
        .create_instance(&nimbus_api::CreateInstance {
            name: "survivor".into(),
            flavor: Some("tiny".into()),
            image: Some("default".into()),
            ..Default::default()
        })
        .await
        .expect("create accepted by controller 3");
    let id = op.id.to_string();
    // Mid-flight: the guest is defined and booting (the step waiting for it runs).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let now = ctl3.operation(&id).await.expect("operation");
        let booting = now
            .steps
            .iter()
            .any(|s| s.name == "wait_ready" && s.state == nimbus_api::StepState::Running);
        if booting {
            break;
        }
        assert!(
            now.state == nimbus_api::OperationState::Running,
            "the create ended before the kill: {now:?}"
        );
        assert!(
            Instant::now() < deadline,
            "the guest never started booting: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid_of(cloud, 3)),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9 controller 3");
    let killed = Instant::now();
    // Controller 1 (the CLI's default) finishes it.
    let ctl1 = cloud.client().expect("client of controller 1");
    let deadline = Instant::now() + Duration::from_secs(120);
    let done = loop {
        let now = ctl1.operation(&id).await.expect("operation");
        if now.state != nimbus_api::OperationState::Running {
            break now;
        }
        assert!(Instant::now() < deadline, "the create never ended: {now:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!(
        "create ended {:.1} s after kill -9 of its controller",
        killed.elapsed().as_secs_f64()
    );
    assert_eq!(
        done.state,
        nimbus_api::OperationState::Succeeded,
        "{done:?}"
    );
    let inst = ctl1.instance("survivor").await.expect("instance");
    assert_eq!(inst.state, nimbus_api::InstanceState::Running, "{inst:?}");
    let vm = inst.id.to_string();
    assert_eq!(cloud.qemu_count(&vm), 1, "one QEMU for the instance");
    let hosts = ctl1.list_hosts().await.expect("hosts");
    let held: (u32, u64) = hosts.iter().fold((0, 0), |(n, m), h| {
        (n + h.instances, m + h.memory_mib_allocated)
    });
    assert_eq!(held, (1, 256), "capacity counted once: {hosts:?}");
}
