//! Helpers of the migration tests: two agents, a booted guest, bounded waits, checks.

pub use crate::common::exec;
use crate::common::{qemu_pids_for, wait_for, wait_pid_gone, QemuReaper, TestAgent};
use nimbus_agent::ImageManifest;
use nimbus_agent_api::{
    AgentClient, DiskSpec, DiskTransfer, IncomingReady, IncomingRequest, MigrateRequest,
    MigrationPhase, MigrationPolicy, MigrationProgress, VmRunState, VmSpec, VmStatus,
};
use std::path::PathBuf;
use std::time::Duration;
use uuid::Uuid;

pub const BOOT_LIMIT: Duration = Duration::from_secs(90);
pub const MIGRATION_LIMIT: Duration = Duration::from_secs(180);
/// A heartbeat younger than this means the guest runs.
pub const FRESH_MS: u64 = 2_000;

/// One test at a time: each runs two TCG guests on a small machine.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Two agents, a guest image and a cleanup guard.
pub struct Pair {
    tmp: tempfile::TempDir,
    _reaper: QemuReaper,
    manifest: ImageManifest,
    pub a: TestAgent,
    pub b: TestAgent,
}

impl Pair {
    /// `None` (the test is skipped) without the default image.
    pub async fn start(test: &str) -> Option<Self> {
        let image_dir = ImageManifest::default_dir();
        let Ok(manifest) = ImageManifest::load(&image_dir) else {
            eprintln!(
                "SKIPPED {test}: no guest image at {} (build it with guest/build.sh)",
                image_dir.display()
            );
            return None;
        };
        let tmp = tempfile::tempdir().expect("tempdir");
        let reaper = QemuReaper(tmp.path().to_path_buf());
        let a = TestAgent::start(&tmp.path().join("a")).await;
        let b = TestAgent::start(&tmp.path().join("b")).await;
        Some(Self {
            tmp,
            _reaper: reaper,
            manifest,
            a,
            b,
        })
    }

    pub fn state_dir(&self, side: &str) -> PathBuf {
        self.tmp.path().join(side)
    }

    /// Defines and boots a guest on A; waits until it is ready and beating.
    pub async fn boot_on_a(&self, name: &str) -> VmSpec {
        let spec = VmSpec {
            id: Uuid::new_v4(),
            name: name.into(),
            vcpus: 1,
            memory_mib: 256,
            image: self.manifest.guest_image(),
            disk: DiskSpec { size_gib: 1 },
            ha: false,
            nics: Vec::new(),
            seed: None,
        };
        let c = &self.a.client;
        c.define_vm(&spec).await.expect("define");
        c.start_vm(spec.id).await.expect("start");
        wait_for(c, spec.id, BOOT_LIMIT, "guest ready on A", |s| {
            s.guest_ready && beating(s)
        })
        .await;
        spec
    }

    /// Deletes the VM on both sides and checks that no QEMU is left.
    pub async fn finish(self, id: Uuid) {
        self.a.client.delete_vm(id).await.expect("delete on A");
        self.b.client.delete_vm(id).await.expect("delete on B");
        for pid in qemu_pids_for(self.tmp.path()) {
            wait_pid_gone(pid).await;
        }
        self.a.shutdown().await;
        self.b.shutdown().await;
    }
}

pub fn beating(s: &VmStatus) -> bool {
    s.heartbeat_age_ms.is_some_and(|a| a < FRESH_MS)
}

/// The guest's uptime in seconds.
pub async fn uptime(c: &AgentClient, id: Uuid) -> f64 {
    let out = exec(c, id, "cat /proc/uptime").await;
    out.split_whitespace()
        .next()
        .and_then(|u| u.parse().ok())
        .expect("uptime")
}

pub async fn incoming(pair: &Pair, spec: &VmSpec, disk: DiskTransfer) -> IncomingReady {
    incoming_with(pair, spec, disk, MigrationPolicy::default()).await
}

pub async fn incoming_with(
    pair: &Pair,
    spec: &VmSpec,
    disk: DiskTransfer,
    policy: MigrationPolicy,
) -> IncomingReady {
    let req = IncomingRequest {
        spec: spec.clone(),
        disk,
        policy,
        source_host: None,
        tls_credential: None,
        guest_ready: false,
    };
    let ready = pair
        .b
        .client
        .migration_incoming(&req)
        .await
        .expect("incoming");
    let waiting = pair.b.client.vm(spec.id).await.expect("status on B");
    assert_eq!(
        (waiting.state, waiting.incoming),
        (VmRunState::Starting, true),
        "{waiting:?}"
    );
    // Asked again while it waits: the same answer.
    let again = pair.b.client.migration_incoming(&req).await.expect("again");
    assert_eq!(again, ready);
    ready
}

pub async fn wait_progress(
    c: &AgentClient,
    id: Uuid,
    what: &str,
    pred: impl Fn(&MigrationProgress) -> bool,
) -> MigrationProgress {
    let deadline = tokio::time::Instant::now() + MIGRATION_LIMIT;
    loop {
        let p = c.migration(id).await.expect("progress");
        if pred(&p) {
            return p;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; last progress {p:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs a migration A -> B to its end with the default policy; returns the final progress.
pub async fn migrate(pair: &Pair, id: Uuid, target: IncomingReady) -> MigrationProgress {
    migrate_with(pair, id, target, MigrationPolicy::default()).await
}

pub async fn migrate_with(
    pair: &Pair,
    id: Uuid,
    target: IncomingReady,
    policy: MigrationPolicy,
) -> MigrationProgress {
    let req = MigrateRequest {
        target,
        policy,
        migration_id: None,
        owner_epoch: None,
        target_host: None,
        tls_credential: None,
    };
    let first = pair
        .a
        .client
        .migration_start(id, &req)
        .await
        .expect("start");
    assert!(!first.phase.is_final(), "{first:?}");
    let done = wait_progress(&pair.a.client, id, "migration end", |p| p.phase.is_final()).await;
    assert_eq!(done.phase, MigrationPhase::Completed, "{done:?}");
    done
}

/// Checks the target after switch-over and prints the figures.
pub async fn check_arrival(pair: &Pair, id: Uuid, done: &MigrationProgress) -> VmStatus {
    // The transfer task publishes `completed` just before the VM's actor records the state.
    wait_for(
        &pair.a.client,
        id,
        Duration::from_secs(10),
        "the source to be migrated",
        |s| s.state == VmRunState::Migrated,
    )
    .await;
    let arrived = wait_for(
        &pair.b.client,
        id,
        Duration::from_secs(30),
        "guest running and beating on B",
        |s| s.state == VmRunState::Running && s.guest_ready && beating(s),
    )
    .await;
    assert!(!arrived.incoming);
    let stop = done.stopped_unix_ms.expect("STOP time on the source");
    let resume = arrived.resumed_unix_ms.expect("RESUME time on the target");
    let last = done.last_heartbeat_unix_ms.expect("last heartbeat on A");
    let first = arrived
        .first_heartbeat_unix_ms
        .expect("first heartbeat on B");
    assert!(first >= resume, "first beat {first} before RESUME {resume}");
    assert!(resume >= stop);
    eprintln!(
        "migration: {} rounds, {} MiB sent in {} ms; downtime (STOP->RESUME) {} ms, \
         heartbeat gap {} ms; escalations {:?}",
        done.round,
        done.transferred_bytes >> 20,
        done.elapsed_ms,
        resume - stop,
        first - last,
        done.escalations
    );
    arrived
}

/// Starts `dirty-mem 64 100` in the guest on A (64 MiB rewritten at 100 MiB/s), lets it
/// fill its buffer, and returns its pid (it keeps running on the target).
pub async fn start_dirty_mem(pair: &Pair, id: Uuid) -> String {
    let pid = exec(
        &pair.a.client,
        id,
        "dirty-mem 64 100 >/dev/null 2>&1 & echo $!",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    exec(&pair.a.client, id, &format!("kill -0 {}", pid.trim())).await;
    pid.trim().to_string()
}

/// Starts a migration capped at 5 MiB/s and waits until memory is being sent.
pub async fn start_slow(pair: &Pair, id: Uuid, target: IncomingReady) {
    let req = MigrateRequest {
        target,
        policy: MigrationPolicy {
            max_bandwidth_mib_s: Some(5),
            ..MigrationPolicy::default()
        },
        migration_id: None,
        owner_epoch: None,
        target_host: None,
        tls_credential: None,
    };
    pair.a
        .client
        .migration_start(id, &req)
        .await
        .expect("start");
    wait_progress(&pair.a.client, id, "pre-copy under way", |p| {
        p.phase == MigrationPhase::PreCopy && p.transferred_bytes > 0
    })
    .await;
}

/// The VM runs on A: running, beating, answering.
pub async fn still_runs_on_a(pair: &Pair, id: Uuid) {
    wait_for(
        &pair.a.client,
        id,
        Duration::from_secs(10),
        "VM runs on A",
        |s| s.state == VmRunState::Running && beating(s),
    )
    .await;
    assert_eq!(exec(&pair.a.client, id, "echo alive").await, "alive\n");
}

pub fn kill9(pid: u32) {
    let pid = i32::try_from(pid).expect("pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9");
}
