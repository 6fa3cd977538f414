//! `nimbus up --controllers 3` through the real binary (issue 12): three controllers over one
//! PostgreSQL and two host agents: each background task run by exactly one controller;
//! creates of real guests racing through all three for a host's last slots (exactly its
//! room succeed); the CLI given several URLs moving to a live one when the first was killed
//! -9; a real guest's create finished by another controller after its own was killed -9
//! mid-boot, and a live migration after its controller was killed -9 mid-copy (one QEMU,
//! capacity counted once); an image uploaded through one controller copied to every
//! controller (`image show`: 3 of 3 live controllers), and an instance created from it
//! through another after the first was killed -9 (it boots); a snapshot of that instance
//! started through controller 3, killed -9 in the snapshot's step in flight: another
//! controller finishes it, it restores, one QEMU
//! (deleting the image then removes every controller's copy); each killed controller
//! restarted by `nimbus up` and serving again within a bound; `--controllers 2` refused
//! without PostgreSQL.
//!
//! Needs `NIMBUS_TEST_POSTGRES_URL` (CI sets it; `bash scripts/ci-postgres.sh` prints one):
//! fails clearly without it.

use nimbus_api::ControllerView;
use nimbus_test_utils::controllers::TestDatabase;
use nimbus_test_utils::disks::halting_disk;
use nimbus_test_utils::guest::cli_ok;
use nimbus_test_utils::{Cloud, CloudOptions};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_nimbus");
/// The instance created from the uploaded image (then snapshotted).
const FROM_UPLOAD: &str = "from-upload";
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
    // Every controller keeps a snapshot's `take` step in flight 8 s after the host took it,
    // so that its owner can be killed there (the only snapshot of this test).
    std::env::set_var("NIMBUS_FAILPOINT_HOLD", "snapshot.take:8");
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
    let third = this_controller(&cloud, 3);
    let digest = image_survives_its_controller(&cloud).await;
    killed_controller_comes_back(&cloud, 3, &third);
    let third = this_controller(&cloud, 3);
    snapshot_survives_its_controller(&cloud, FROM_UPLOAD).await;
    killed_controller_comes_back(&cloud, 3, &third);
    delete_instance_and_image(&cloud);
    deleted_image_leaves_every_controller(&cloud, &digest);
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
    let killed = kill_in_step(cloud, &ctl2, &id, "transfer", 2, Duration::ZERO).await;
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
    let killed = kill_in_step(cloud, &ctl3, &id, "wait_ready", 3, Duration::ZERO).await;
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

/// Where controller `i` keeps its copy of the image bytes `digest` (controller 1: the data
/// dir; the others: their own directory, as on separate machines).
fn copy_on(cloud: &Cloud, i: u16, digest: &str) -> std::path::PathBuf {
    let root = match i {
        1 => cloud.data_dir(),
        i => cloud.data_dir().join("controllers").join(format!("ctl{i}")),
    };
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    root.join("images").join("sha256").join(hex)
}

/// An image uploaded through controller 3 is copied to every controller (a user sees the
/// same bytes in each one's store); controller 3 is killed -9; an instance created from the
/// image through controller 2 boots, its host fetching the bytes from a live controller.
/// Answers the image's digest.
async fn image_survives_its_controller(cloud: &Cloud) -> String {
    let tmp = tempfile::tempdir().expect("tempdir");
    let disk = halting_disk(tmp.path());
    let img: nimbus_api::ImageView = serde_json::from_str(&cli_ok(
        cloud,
        &[
            "--api",
            &url_of(cloud, 3),
            "image",
            "upload",
            "halt",
            "--file",
            disk.to_str().expect("utf-8"),
            "--no-ready-marker",
            "--wait",
            "-o",
            "json",
        ],
    ))
    .expect("the uploaded image");
    let digest = img.digest.expect("an uploaded image's digest");
    let uploaded = Instant::now();
    let bytes = std::fs::read(&disk).expect("the disk");
    for i in 1..=3 {
        let copy = copy_on(cloud, i, &digest);
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::fs::read(&copy).ok().as_deref() != Some(&bytes[..]) {
            assert!(
                Instant::now() < deadline,
                "controller {i} holds no copy of the image at {}\n{}",
                copy.display(),
                cloud.log_tail(30)
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    eprintln!(
        "image copied to the 3 controllers {:.1} s after its upload",
        uploaded.elapsed().as_secs_f64()
    );
    // `image show` says so (an admin sees which controllers).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let shown: nimbus_api::ImageView =
            serde_json::from_str(&cli_ok(cloud, &["image", "show", "halt", "-o", "json"]))
                .expect("image show");
        let copies = shown.copies.expect("an uploaded image's copies");
        if copies.held == 3 {
            assert_eq!(
                (copies.controllers, copies.held_by.len()),
                (3, 3),
                "{copies:?}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "image show says {copies:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid_of(cloud, 3)),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9 controller 3");
    let op: nimbus_api::OperationView = serde_json::from_str(&cli_ok(
        cloud,
        &[
            "--api",
            &url_of(cloud, 2),
            "instance",
            "create",
            FROM_UPLOAD,
            "--flavor",
            "tiny",
            "--image",
            "halt",
            "--wait",
            "-o",
            "json",
        ],
    ))
    .expect("the create's operation");
    assert_eq!(
        op.state,
        nimbus_api::OperationState::Succeeded,
        "{op:?}\n{}",
        cloud.log_tail(30)
    );
    let ctl2 = client_of(cloud, 2);
    let inst = ctl2.instance(FROM_UPLOAD).await.expect("instance");
    assert_eq!(inst.state, nimbus_api::InstanceState::Running, "{inst:?}");
    assert_eq!(cloud.qemu_count(&inst.id.to_string()), 1, "it boots, once");
    digest
}

/// Deletes the instance made from the uploaded image (and its snapshot), then the image,
/// through controller 2.
fn delete_instance_and_image(cloud: &Cloud) {
    let ctl2 = url_of(cloud, 2);
    cli_ok(
        cloud,
        &["--api", &ctl2, "instance", "delete", FROM_UPLOAD, "--wait"],
    );
    cli_ok(cloud, &["--api", &ctl2, "image", "delete", "halt"]);
}

/// After the image was deleted (through one controller), every controller removes its
/// copy, controller 3 (restarted meanwhile) included.
fn deleted_image_leaves_every_controller(cloud: &Cloud, digest: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    for i in 1..=3 {
        let copy = copy_on(cloud, i, digest);
        while copy.exists() {
            assert!(
                Instant::now() < deadline,
                "controller {i} kept the deleted image's bytes at {}",
                copy.display()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

/// A snapshot (with memory) of `instance` started through controller 3, which is killed -9
/// while the snapshot's `take` step is in flight (the failpoint holds it there after the
/// host took it): another controller takes the operation over, re-runs the step (the host
/// answers the snapshot it took) and finishes it; the snapshot restores, and the VM runs in
/// exactly one place.
async fn snapshot_survives_its_controller(cloud: &Cloud, instance: &str) {
    let ctl3 = client_of(cloud, 3);
    let op = ctl3
        .create_snapshot(&nimbus_api::CreateSnapshot {
            instance: instance.into(),
            name: Some("held".into()),
            disk_only: false,
        })
        .await
        .expect("snapshot accepted by controller 3");
    let id = op.id.to_string();
    // Inside the step: the host is taking it, or has and the failpoint holds the step.
    let killed = kill_in_step(cloud, &ctl3, &id, "take", 3, Duration::from_secs(1)).await;
    let ctl1 = cloud.client().expect("client of controller 1");
    let done = ctl1
        .wait_operation(&id, Duration::from_secs(120), |_| {})
        .await
        .expect("the snapshot ends");
    eprintln!(
        "snapshot ended ({:?}) {:.1} s after kill -9 of its controller",
        done.state,
        killed.elapsed().as_secs_f64()
    );
    assert_eq!(
        done.state,
        nimbus_api::OperationState::Succeeded,
        "{done:?}"
    );
    let logs = controller_logs(cloud);
    let owned_by_3 = logs[2]
        .lines()
        .any(|l| l.contains("snapshot.take") && l.contains("holding the step in flight"));
    let taken = logs.iter().any(|log| {
        log.lines()
            .any(|l| l.contains(&id) && l.contains("took the operation over"))
    });
    assert!(
        owned_by_3 && taken,
        "controller 3 held the step when killed ({owned_by_3}) and another took the \
         snapshot over ({taken})"
    );
    let snap = ctl1.snapshot("held").await.expect("the snapshot");
    assert_eq!(snap.state, nimbus_api::SnapshotState::Available, "{snap:?}");
    assert!(snap.memory, "{snap:?}");
    let op = ctl1.restore_snapshot("held").await.expect("restore");
    let restored = ctl1
        .wait_operation(&op.id.to_string(), Duration::from_secs(180), |_| {})
        .await
        .expect("the restore ends");
    assert_eq!(
        restored.state,
        nimbus_api::OperationState::Succeeded,
        "{restored:?}"
    );
    let inst = ctl1.instance(instance).await.expect("instance");
    assert_eq!(inst.state, nimbus_api::InstanceState::Running, "{inst:?}");
    assert_eq!(
        cloud.qemu_count(&inst.id.to_string()),
        1,
        "one QEMU after the restore"
    );
}

/// Waits (bounded) until operation `id`'s step `step` runs, then `settle` more, and kills
/// controller `i` -9; answers when.
async fn kill_in_step(
    cloud: &Cloud,
    client: &nimbus_client::Client,
    id: &str,
    step: &str,
    i: u16,
    settle: Duration,
) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let now = client.operation(id).await.expect("operation");
        let running = now
            .steps
            .iter()
            .any(|s| s.name == step && s.state == nimbus_api::StepState::Running);
        if running {
            break;
        }
        assert!(
            now.state == nimbus_api::OperationState::Running,
            "the operation ended before the kill: {now:?}"
        );
        assert!(
            Instant::now() < deadline,
            "step {step} never started: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(settle).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid_of(cloud, i)),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap_or_else(|e| panic!("kill -9 controller {i}: {e}"));
    Instant::now()
}

/// The logs of controllers 1 (in `nimbus up`'s log), 2 and 3 (every run, appended).
fn controller_logs(cloud: &Cloud) -> [String; 3] {
    let of = |i: u16| {
        let log = cloud
            .data_dir()
            .join("controllers")
            .join(format!("ctl{i}"))
            .join("controller.log");
        std::fs::read_to_string(log).unwrap_or_default()
    };
    [cloud.log_tail(usize::MAX), of(2), of(3)]
}
