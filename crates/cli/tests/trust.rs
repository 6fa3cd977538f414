//! End to end: the control plane never destroys what it does not know, and QEMU is confined
//! (issue 11, parts 3 and 4).
//!
//! One cloud with two hosts on shared storage and two real guests, shared by the scenarios:
//! - each QEMU runs as a user of its own, in its cgroup with the flavor's limits, and cannot
//!   read the other VM's disk; a guest flooding its console cannot make its log take more
//!   disk than the bound;
//! - a migration whose prepare_target step fails after the target linked the shared disk
//!   (failure injected in the controller: the step's answer is lost) is undone without
//!   touching the disk the source VM runs on;
//! - `nimbus up` stopped, its database removed (a restore gone wrong), started again: the
//!   running VM is not deleted, it is listed as an orphan (CLI and `/metrics`), and only
//!   `nimbus host orphans delete` removes it.

use nimbus_api::{OrphanKind, OrphanView};
use nimbus_test_utils::guest::*;
use nimbus_test_utils::{wait_until, Cloud, CloudOptions};
use std::path::Path;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_nimbus");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_unknown_is_destroyed() {
    // Inherited by `nimbus up`, whose controller runs the migration steps. This test file
    // has one test, so no other test sees it.
    std::env::set_var("NIMBUS_FAILPOINTS", "migrate.after_prepare_target");
    std::env::set_var("NIMBUS_CONSOLE_LOG_MAX_BYTES", CONSOLE_MAX.to_string());
    let opts = CloudOptions {
        hosts: 2,
        extra_args: vec!["--shared-storage".into()],
    };
    let mut cloud = Cloud::start(Path::new(BIN), opts)
        .await
        .expect("start the cloud");
    create_instances(&cloud, &["keep1", "keep2"], "tiny").await;
    let client = cloud.client().expect("client");
    let inst = instance(&client, "keep1").await;
    let id = inst.id.to_string();
    let host = inst.host.clone().expect("placed");
    let other = instance(&client, "keep2").await.id.to_string();
    exec(&client, "keep1", "echo kept > /data/mark && sync").await;

    qemu_is_confined(&cloud, &id, &other);
    console_flood_is_bounded(&cloud, &other).await;
    failed_shared_migration_keeps_the_disk(&cloud, &id, &host).await;
    lost_database_deletes_nothing(&mut cloud, &id, &host).await;
}

async fn failed_shared_migration_keeps_the_disk(cloud: &Cloud, id: &str, host: &str) {
    let client = cloud.client().expect("client");
    let disk = cloud.data_dir().join("shared").join(id).join("disk.qcow2");
    assert!(disk.is_file(), "the disk is on shared storage");
    let err = cli_err(cloud, &["instance", "migrate", "keep1", "--wait"]);
    assert!(err.contains("prepare_target: injected failure"), "{err}");
    assert!(disk.is_file(), "the shared disk survives the undo");
    let after = instance(&client, "keep1").await;
    assert_eq!(after.host.as_deref(), Some(host), "still on its source");
    assert_eq!(cloud.qemu_count(id), 1, "only the source's QEMU runs");
    assert_eq!(
        exec(&client, "keep1", "cat /data/mark").await.trim(),
        "kept",
        "the guest still reads its disk"
    );
}

async fn lost_database_deletes_nothing(cloud: &mut Cloud, id: &str, host: &str) {
    let vm_dir = cloud.host_dir(host).join("vms").join(id);
    let disk = cloud.data_dir().join("shared").join(id).join("disk.qcow2");
    cloud.kill_up().expect("stop nimbus up");
    for f in ["nimbus.db", "nimbus.db-wal", "nimbus.db-shm"] {
        let _ = std::fs::remove_file(cloud.data_dir().join(f));
    }
    cloud.restart_up().await.expect("start again");
    let client = cloud.client().expect("client");
    assert!(
        client.list_instances().await.expect("list").is_empty(),
        "the new database knows no instance"
    );

    // The agent re-adopted the VM and reports it; the reconciler lists it, deletes nothing.
    let orphans: Vec<OrphanView> = wait_until(
        "the VM to be listed as an orphan",
        Duration::from_secs(30),
        Duration::from_millis(500),
        || async {
            let out = cli_ok(cloud, &["-o", "json", "host", "orphans", host]);
            let list: Vec<OrphanView> = serde_json::from_str(&out).expect("orphans JSON");
            (!list.is_empty()).then_some(list)
        },
    )
    .await
    .expect("orphan listed");
    let mine: Vec<_> = orphans
        .iter()
        .filter(|o| o.vm_id.to_string() == id)
        .collect();
    assert_eq!(mine.len(), 1, "{orphans:?}");
    assert_eq!(mine[0].kind, OrphanKind::Unknown);
    // Several reconcile passes later (every 2 s) it still runs, with its disk.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(cloud.qemu_count(id), 1, "the orphan VM still runs");
    assert!(disk.is_file() && vm_dir.is_dir(), "its files are intact");
    let table = cli_ok(cloud, &["host", "orphans"]);
    assert!(table.contains(id) && table.contains("unknown"), "{table}");
    let metrics = metrics_text(cloud).await;
    assert!(
        metrics.contains(&format!(
            "nimbus_orphan_vms{{host=\"{host}\",kind=\"unknown\"}} 1"
        )),
        "{metrics}"
    );

    // An id that is not an orphan of that host is refused, and changes nothing.
    let err = cli_err(
        cloud,
        &[
            "host",
            "orphans",
            "delete",
            host,
            &uuid::Uuid::new_v4().to_string(),
        ],
    );
    assert!(err.contains("has no orphan"), "{err}");

    // The operator's command removes it.
    cli_ok(cloud, &["host", "orphans", "delete", host, id]);
    assert_eq!(cloud.qemu_count(id), 0, "the orphan's QEMU is gone");
    assert!(!vm_dir.exists(), "its directory is gone");
    let left = cli_ok(cloud, &["-o", "json", "host", "orphans"]);
    let left: Vec<OrphanView> = serde_json::from_str(&left).expect("orphans JSON");
    assert!(left.iter().all(|o| o.vm_id.to_string() != id), "{left:?}");
}

/// The bound on console logs this test sets (agents inherit it).
const CONSOLE_MAX: u64 = 1 << 20;
/// First uid of VM users, and their group (crates/agent/src/confine/user.rs).
const VM_UID_BASE: u32 = 1_000_000_000;

fn status_field(pid: i32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn qemu_pid(cloud: &Cloud, id: &str) -> i32 {
    let pids = cloud.qemu_pids();
    let found = pids.iter().find(|(d, _)| d.ends_with(id));
    found.map(|(_, p)| *p).expect("the VM's QEMU runs")
}

/// The host whose agent runs VM `id` (its directory is `<host dir>/vms/<id>`).
fn host_of(cloud: &Cloud, id: &str) -> String {
    let pids = cloud.qemu_pids();
    let (dir, _) = pids
        .iter()
        .find(|(d, _)| d.ends_with(id))
        .expect("the VM's QEMU runs");
    let host_dir = dir.parent().and_then(Path::parent).expect("host dir");
    host_dir
        .file_name()
        .expect("host name")
        .to_string_lossy()
        .into_owned()
}

fn uid_of(pid: i32) -> u32 {
    let uids = status_field(pid, "Uid");
    let all: Vec<u32> = uids
        .split_whitespace()
        .map(|u| u.parse().expect("uid"))
        .collect();
    assert!(
        all.iter().all(|u| *u == all[0]),
        "real, effective, saved, fs: {uids}"
    );
    all[0]
}

/// Reads `path` as `uid` (and its own group only): whether it could.
fn can_read_as(uid: u32, path: &Path) -> bool {
    use std::os::unix::process::CommandExt;
    std::process::Command::new("head")
        .args(["-c", "1"])
        .arg(path)
        .uid(uid)
        .gid(VM_UID_BASE)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run head")
        .success()
}

fn qemu_is_confined(cloud: &Cloud, id: &str, other: &str) {
    let (pid, other_pid) = (qemu_pid(cloud, id), qemu_pid(cloud, other));
    let (uid, other_uid) = (uid_of(pid), uid_of(other_pid));
    assert!(
        uid >= VM_UID_BASE && other_uid >= VM_UID_BASE,
        "{uid} {other_uid}"
    );
    assert_ne!(uid, other_uid, "one user per VM");
    assert_eq!(status_field(pid, "CapEff"), "0000000000000000");
    assert_eq!(
        status_field(pid, "Groups"),
        VM_UID_BASE.to_string(),
        "only the VM users' group"
    );
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    assert_eq!(
        status_field(pid, "Seccomp"),
        "2",
        "the seccomp sandbox is on"
    );

    // In its own cgroup, with the tiny flavor's limits (256 MiB + 256 + 256/16 overhead).
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
    let host = host_of(cloud, id);
    let leaf = format!("/nimbus/{host}/{id}");
    assert!(cgroups.lines().any(|l| l.ends_with(&leaf)), "{cgroups}");
    let memory = (256u64 + 256 + 16) << 20;
    let v2 = Path::new("/sys/fs/cgroup/nimbus").join(&host).join(id);
    let (mem_file, pids_file) = if v2.is_dir() {
        (v2.join("memory.max"), v2.join("pids.max"))
    } else {
        let v1 = |c: &str, f: &str| {
            Path::new("/sys/fs/cgroup")
                .join(c)
                .join("nimbus")
                .join(&host)
                .join(id)
                .join(f)
        };
        (
            v1("memory", "memory.limit_in_bytes"),
            v1("pids", "pids.max"),
        )
    };
    let read = |p: &Path| {
        std::fs::read_to_string(p)
            .expect("cgroup file")
            .trim()
            .to_string()
    };
    assert_eq!(read(&mem_file), memory.to_string());
    assert_eq!(read(&pids_file), "512");

    // Its own disk is its own; the other VM's it cannot read.
    let shared = cloud.data_dir().join("shared");
    let (disk, other_disk) = (
        shared.join(id).join("disk.qcow2"),
        shared.join(other).join("disk.qcow2"),
    );
    assert!(can_read_as(uid, &disk), "a VM's user reads its own disk");
    assert!(
        !can_read_as(uid, &other_disk),
        "another VM's disk is closed to it"
    );
    assert!(!can_read_as(other_uid, &disk));
}

async fn console_flood_is_bounded(cloud: &Cloud, id: &str) {
    let client = cloud.client().expect("client");
    let inst = client.instance(id).await.expect("instance");
    let log = cloud
        .host_dir(inst.host.as_deref().expect("placed"))
        .join("vms")
        .join(id)
        .join("console.log");
    exec(
        &client,
        "keep2",
        "touch /tmp/flood; (while [ -e /tmp/flood ]; do echo nimbus-console-flood-0123456789abcdefghijklmnopqrstuvwxyz; done) >/dev/ttyS0 2>&1 </dev/null &",
    )
    .await;
    use std::os::unix::fs::MetadataExt;
    let written = wait_until(
        "the guest to write 3 times the bound to its console",
        Duration::from_secs(120),
        Duration::from_millis(250),
        || async {
            let m = std::fs::metadata(&log).ok()?;
            assert!(
                m.blocks() * 512 <= 2 * CONSOLE_MAX,
                "console.log takes {} bytes of disk",
                m.blocks() * 512
            );
            (m.len() > 3 * CONSOLE_MAX).then_some(m.len())
        },
    )
    .await
    .expect("flood");
    exec(&client, "keep2", "rm -f /tmp/flood").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let used = std::fs::metadata(&log).expect("stat").blocks() * 512;
    eprintln!(
        "console flood: {written} bytes written, {used} bytes of disk used (bound {CONSOLE_MAX})"
    );
    assert!(used <= 2 * CONSOLE_MAX, "{used}");
    // The log still serves its tail.
    let tail = cli_ok(cloud, &["instance", "log", "keep2"]);
    assert!(
        tail.contains("nimbus-console-flood"),
        "{}",
        &tail[tail.len().saturating_sub(300)..]
    );
}

async fn metrics_text(cloud: &Cloud) -> String {
    cloud
        .http()
        .expect("http client")
        .get(format!("{}/metrics", cloud.api()))
        .bearer_auth(cloud.token().expect("token"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body")
}
