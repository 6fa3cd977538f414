//! One VM on this host: an actor task owning its QEMU process and QMP client, and the
//! handle the rest of the agent talks to it through.
//!
//! ```text
//!             define
//!               |
//!               v        start            QMP up
//!   +------> Stopped ----------> Starting -------> Running <------+
//!   |           ^                   |               |  |  reboot  |
//!   |           |     launch failed |               |  +----------+  (guest_ready=false
//!   |           |                   v               |                 until the marker)
//!   |           |      start     Crashed <----------+ QEMU exited, not asked to
//!   |           |   (relaunch)      ^               |  (a guest power-off -> Stopped)
//!   |           |                   |               | stop
//!   |           |                   |               v
//!   |           +------------------------------- Stopping
//!   |              QEMU exited (powerdown, or quit/kill after the timeout)
//!   |
//!   +-- delete from any state: kill QEMU at once, remove the VM directory
//! ```
//! Live migration ([`crate::migration`]) adds: a target waits in `Starting` with `incoming`
//! until its guest resumes (then `Running`; if QEMU exits first: `Crashed`), and a source
//! whose migration completed is `Migrated` (QEMU paused) until it is deleted or a cancel
//! resumes it (`Running`).
//! Commands reach the actor over a bounded channel and are answered on oneshots. Kill
//! (for delete) and detach (agent shutdown: QEMU keeps running) use a separate priority
//! channel that the actor polls first, and a stop in progress is a state of the actor, not a
//! blocking wait, so a slow guest never delays a delete. If the actor does not acknowledge a
//! kill in time, the handle kills QEMU through its pid file and aborts the task.
//!
//! Every change of the status bumps `generation` and is persisted in `state.json`. The live
//! figures (heartbeat age, CPU time, RSS, disk usage) are read when a status is asked for.

mod actor;
pub mod atomic_file;
pub mod disk;
pub mod exec;
pub mod files;
pub mod firmware;
pub mod heartbeat;
pub mod launch;
pub mod lines;
pub mod marker;
pub mod seed;
pub mod state;

use crate::error::{Error, Result};
use crate::migration::incoming::IncomingPlan;
pub(crate) use actor::snapshot::{RestorePlan, StreamPlan, TakePlan, Taken};
use files::VmDir;
use heartbeat::LastBeat;
use nimbus_agent_api::{
    ConsoleChunk, ExecRequest, ExecResult, IncomingReady, MigrateRequest, MigrationProgress,
    StopRequest, VmSpec, VmStatus,
};
use nimbus_qemu::{procfs, Accel, QemuProcess};
use state::CoreStatus;
use std::io::{Read, Seek, SeekFrom};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

/// Most console bytes returned per call.
pub const CONSOLE_CHUNK_MAX: u64 = 256 * 1024;

type Reply<T = ()> = oneshot::Sender<Result<T>>;

/// Requests the actor handles in turn.
enum Command {
    Start(Reply),
    Stop(StopRequest, Reply),
    Reboot(Reply),
    /// Launch QEMU waiting for an incoming migration (target side).
    Receive(IncomingPlan, Reply<IncomingReady>),
    /// Send the VM to a prepared target (source side).
    Migrate(MigrateRequest, Reply<MigrationProgress>),
    /// Cancel the migration; the VM runs on here.
    CancelMigration(Reply<MigrationProgress>),
    /// Freeze the disk layer and start a memory image, in one short pause.
    TakeSnapshot(TakePlan, Reply<Taken>),
    /// Replace the running VM by one restored from a snapshot.
    Restore(RestorePlan, Reply),
    /// Merge disk layers of the running VM.
    StreamLayer(StreamPlan, Reply),
    /// Make QEMU write out and sync what it holds of the VM's disks.
    FlushDisks(Reply),
}

/// Requests the actor handles before anything else.
enum Priority {
    /// Kill QEMU now and end the actor (delete).
    Kill(oneshot::Sender<()>),
    /// End the actor and leave QEMU running (agent shutdown).
    Detach(oneshot::Sender<()>),
}

/// How an actor is set up.
pub(crate) struct ActorSetup {
    pub id: Uuid,
    pub spec: VmSpec,
    pub dir: VmDir,
    pub accel: Accel,
    /// The host network every launch plugs the VM's NICs into.
    pub network: Arc<crate::network::HostNetwork>,
    pub status: CoreStatus,
    /// A running QEMU found at agent start.
    pub adopt: Option<QemuProcess>,
    /// How the VM's live migrations are secured.
    pub migration_tls: crate::migration::tls::MigrationTls,
}

/// The agent's handle on one VM.
pub struct VmHandle {
    id: Uuid,
    spec: VmSpec,
    dir: VmDir,
    commands: mpsc::Sender<Command>,
    priority: mpsc::UnboundedSender<Priority>,
    status: watch::Receiver<CoreStatus>,
    migration: watch::Receiver<MigrationProgress>,
    last_beat: Arc<LastBeat>,
    exec_lock: tokio::sync::Mutex<()>,
    console_busy: Arc<AtomicBool>,
    /// Set by [`VmHandle::kill`]: the VM is being deleted.
    deleted: AtomicBool,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl VmHandle {
    /// Starts the actor of a VM. The receiver completes once the actor has taken charge of
    /// an adopted QEMU (its status is then current).
    pub(crate) fn spawn(setup: ActorSetup) -> (Arc<Self>, oneshot::Receiver<()>) {
        let (commands, command_rx) = mpsc::channel(16);
        let (priority, priority_rx) = mpsc::unbounded_channel();
        let (status_tx, status) = watch::channel(setup.status.clone());
        let (migration_tx, migration) =
            watch::channel(crate::migration::initial_progress(&setup.dir));
        let last_beat = Arc::new(LastBeat::default());
        let handle = Arc::new(Self {
            id: setup.id,
            spec: setup.spec.clone(),
            dir: setup.dir.clone(),
            commands,
            priority,
            status,
            migration,
            last_beat: last_beat.clone(),
            exec_lock: tokio::sync::Mutex::new(()),
            console_busy: Arc::default(),
            deleted: AtomicBool::new(false),
            task: Mutex::new(None),
        });
        let (ready_tx, ready) = oneshot::channel();
        let task = actor::spawn(
            setup,
            status_tx,
            Arc::new(migration_tx),
            last_beat,
            command_rx,
            priority_rx,
            ready_tx,
        );
        *handle.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
        (handle, ready)
    }

    /// The VM's id.
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// The spec the VM was defined with.
    pub fn spec(&self) -> &VmSpec {
        &self.spec
    }

    /// The VM's directory.
    pub fn dir(&self) -> &VmDir {
        &self.dir
    }

    /// The VM is being deleted ([`VmHandle::kill`] was called).
    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    /// Follows the persisted part of the status (closed when the actor ends).
    pub fn subscribe(&self) -> watch::Receiver<CoreStatus> {
        self.status.clone()
    }

    /// The current status, with live figures read now.
    pub fn status(&self) -> VmStatus {
        let core = self.status.borrow().clone();
        let stat = core.pid.and_then(procfs::read_stat);
        VmStatus {
            id: self.id,
            state: core.state,
            generation: core.generation,
            reason: core.reason,
            pid: core.pid,
            guest_ready: core.guest_ready,
            ready_via: core.ready_via.filter(|_| core.guest_ready),
            started_at: core.started_at,
            heartbeat_age_ms: core.pid.and_then(|_| self.last_beat.age_ms()),
            cpu_time_ns: stat.map_or(0, |s| s.cpu_time_ns()),
            rss_bytes: core.pid.map_or(0, procfs::read_rss_bytes),
            disk_allocated_bytes: self.dir.disk_allocated_bytes(),
            disk_path: Some(self.dir.disk_path()),
            incoming: core.incoming,
            resumed_unix_ms: core.resumed_unix_ms,
            first_heartbeat_unix_ms: core
                .first_heartbeat_unix_ms
                .or_else(|| core.pid.and(self.last_beat.first_unix_ms())),
        }
    }

    async fn call(&self, make: impl FnOnce(Reply) -> Command) -> Result<VmStatus> {
        self.ask(make).await?;
        Ok(self.status())
    }

    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| Error::Conflict(format!("VM {} is being deleted", self.id)))?;
        rx.await
            .map_err(|_| Error::Conflict(format!("VM {} is being deleted", self.id)))?
    }

    /// Target side: launches QEMU waiting for the VM and opens its endpoints.
    pub async fn receive(&self, plan: IncomingPlan) -> Result<IncomingReady> {
        self.ask(|r| Command::Receive(plan, r)).await
    }

    /// Source side: starts sending the VM; answers at once with the first progress.
    pub async fn migrate(&self, req: MigrateRequest) -> Result<MigrationProgress> {
        self.ask(|r| Command::Migrate(req, r)).await
    }

    /// Cancels the migration (idempotent): the VM runs on here.
    pub async fn cancel_migration(&self) -> Result<MigrationProgress> {
        self.ask(Command::CancelMigration).await
    }

    /// Freezes the disk layer (and starts the memory image) in one short pause.
    pub(crate) async fn take_snapshot(&self, plan: TakePlan) -> Result<Taken> {
        self.ask(|r| Command::TakeSnapshot(plan, r)).await
    }

    /// Replaces the VM by one restored from a snapshot.
    pub(crate) async fn restore(&self, plan: RestorePlan) -> Result<()> {
        self.ask(|r| Command::Restore(plan, r)).await
    }

    /// Merges disk layers of the running VM.
    pub(crate) async fn stream_layer(&self, plan: StreamPlan) -> Result<()> {
        self.ask(|r| Command::StreamLayer(plan, r)).await
    }

    /// Has the VM's QEMU write out and sync what it holds of its disks (nothing to do
    /// without a QEMU).
    pub(crate) async fn flush_disks(&self) -> Result<()> {
        self.ask(Command::FlushDisks).await
    }

    /// The VM runs a QEMU now.
    pub fn has_qemu(&self) -> bool {
        self.status.borrow().pid.is_some()
    }

    /// Progress of the current or last outgoing migration.
    pub fn migration(&self) -> MigrationProgress {
        self.migration.borrow().clone()
    }

    /// Progress of the current or last outgoing migration once it has ended, or as it is
    /// after `within` (whichever comes first): lets the controller follow a migration
    /// without a polling delay added to its end.
    pub async fn migration_when_final(&self, within: std::time::Duration) -> MigrationProgress {
        let mut rx = self.migration.clone();
        let ended = async move { rx.wait_for(|p| p.phase.is_final()).await.map(|p| p.clone()) };
        match tokio::time::timeout(within, ended).await {
            Ok(Ok(p)) => p,
            // Timed out, or the actor is gone: what is known now.
            _ => self.migration(),
        }
    }

    /// Launches QEMU (nothing to do when running).
    pub async fn start(&self) -> Result<VmStatus> {
        self.call(Command::Start).await
    }

    /// Powers the VM off (forced after the timeout, or at once with `force`).
    pub async fn stop(&self, req: StopRequest) -> Result<VmStatus> {
        self.call(|r| Command::Stop(req, r)).await
    }

    /// Resets the VM.
    pub async fn reboot(&self) -> Result<VmStatus> {
        self.call(Command::Reboot).await
    }

    /// Kills QEMU and ends the actor, even if the actor is stuck: after a bounded wait the
    /// process named by the pid file is killed and the task aborted.
    pub async fn kill(&self) {
        self.deleted.store(true, Ordering::Release);
        let (tx, rx) = oneshot::channel();
        let acked = self.priority.send(Priority::Kill(tx)).is_ok()
            && tokio::time::timeout(Duration::from_secs(15), rx)
                .await
                .is_ok();
        if !acked {
            tracing::warn!(instance_id = %self.id, "VM actor did not acknowledge kill; killing by pid");
            self.abort_task();
        }
        if let Some(mut qemu) = QemuProcess::adopt(self.dir.paths()) {
            if let Err(e) = qemu.kill(Duration::ZERO).await {
                tracing::error!(instance_id = %self.id, error = %e, "cannot kill QEMU");
            }
        }
    }

    /// Ends the actor and leaves QEMU running (agent shutdown).
    pub async fn detach(&self) {
        let (tx, rx) = oneshot::channel();
        let acked = self.priority.send(Priority::Detach(tx)).is_ok()
            && tokio::time::timeout(Duration::from_secs(5), rx)
                .await
                .is_ok();
        if !acked {
            self.abort_task();
        }
    }

    fn abort_task(&self) {
        if let Some(task) = self.task.lock().unwrap_or_else(|p| p.into_inner()).take() {
            task.abort();
        }
    }

    fn require_running(&self) -> Result<()> {
        let core = self.status.borrow();
        if core.state != nimbus_agent_api::VmRunState::Running {
            return Err(Error::Conflict(format!(
                "VM {} is {:?}, not running",
                self.id, core.state
            )));
        }
        Ok(())
    }

    /// Runs a command in the guest (one at a time per VM).
    pub async fn exec(&self, req: &ExecRequest) -> Result<ExecResult> {
        self.require_running()?;
        let _one_at_a_time = self.exec_lock.lock().await;
        let limit = Duration::from_secs(req.timeout_secs.max(1));
        exec::run(&self.dir.paths().exec_sock(), &req.command, limit).await
    }

    /// Console output from `offset`, at most [`CONSOLE_CHUNK_MAX`] bytes.
    pub fn console_log(&self, offset: u64) -> Result<ConsoleChunk> {
        let path = self.dir.paths().console_log();
        let mut file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(ConsoleChunk {
                    offset: 0,
                    next_offset: 0,
                    data: String::new(),
                })
            }
            Err(e) => return Err(Error::io("open", &path)(e)),
        };
        let len = file.metadata().map_err(Error::io("stat", &path))?.len();
        // Past what the bound on the log punched out (see `confine::console`).
        let offset = crate::confine::console::first_kept(&file, offset.min(len)).min(len);
        file.seek(SeekFrom::Start(offset))
            .map_err(Error::io("seek", &path))?;
        let mut buf = Vec::new();
        file.take(CONSOLE_CHUNK_MAX)
            .read_to_end(&mut buf)
            .map_err(Error::io("read", &path))?;
        Ok(ConsoleChunk {
            offset,
            next_offset: offset + buf.len() as u64,
            data: String::from_utf8_lossy(&buf).into_owned(),
        })
    }

    /// Connects to the serial console; one client at a time (else `conflict`). The console
    /// stays claimed until the returned guard is dropped.
    pub async fn console_connect(&self) -> Result<(tokio::net::UnixStream, ConsoleClaim)> {
        self.require_running()?;
        if self.console_busy.swap(true, Ordering::AcqRel) {
            return Err(Error::Conflict(format!(
                "the console of VM {} is in use by another client",
                self.id
            )));
        }
        let claim = ConsoleClaim(self.console_busy.clone());
        let sock = self.dir.paths().console_sock();
        let stream = tokio::net::UnixStream::connect(&sock)
            .await
            .map_err(Error::io("connect to", &sock))?;
        Ok((stream, claim))
    }
}

/// Holds the console of a VM; released on drop.
pub struct ConsoleClaim(Arc<AtomicBool>);

impl Drop for ConsoleClaim {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}
