//! The actor task of one VM; see the parent module for the state machine.

mod block_job;
mod freeze;
mod lifecycle;
mod migrate;
mod ready;
pub(crate) mod snapshot;

use super::files::VmDir;
use super::heartbeat::LastBeat;
use super::marker::MarkerFollower;
use super::state::{self, CoreStatus, Intent};
use super::{ActorSetup, Command, Priority, Reply};
use crate::error::error_chain;
use crate::network::HostNetwork;
use migrate::MigrationSlot;
use nimbus_agent_api::{MigrationProgress, VmRunState, VmSpec};
use nimbus_qemu::process::log_tail;
use nimbus_qemu::qmp::EventKind;
use nimbus_qemu::{Accel, ExitInfo, QemuProcess, Qmp, QmpEvent};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;
use uuid::Uuid;

/// How long QEMU may take to open its QMP socket.
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(30);
/// How long connecting and negotiating QMP may take.
const QMP_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the console log is checked for the ready marker.
const MARKER_POLL: Duration = Duration::from_millis(25);
/// How long a QEMU's last events may trail its exit (see `Actor::take_last_events`).
const LAST_EVENTS_WAIT: Duration = Duration::from_millis(500);

pub(super) fn spawn(
    setup: ActorSetup,
    status: watch::Sender<CoreStatus>,
    migration: Arc<watch::Sender<MigrationProgress>>,
    last_beat: Arc<LastBeat>,
    commands: mpsc::Receiver<Command>,
    priority: mpsc::UnboundedReceiver<Priority>,
    ready: oneshot::Sender<()>,
) -> JoinHandle<()> {
    let span = tracing::info_span!("vm", instance_id = %setup.id);
    let actor = Actor {
        id: setup.id,
        spec: setup.spec,
        dir: setup.dir,
        accel: setup.accel,
        network: setup.network,
        status,
        last_beat,
        commands,
        priority,
        run: None,
        stop: None,
        migration: MigrationSlot::new(migration, setup.migration_tls),
    };
    tokio::spawn(actor.run(setup.adopt, ready).instrument(span))
}

struct Actor {
    id: Uuid,
    spec: VmSpec,
    dir: VmDir,
    accel: Accel,
    network: Arc<HostNetwork>,
    status: watch::Sender<CoreStatus>,
    last_beat: Arc<LastBeat>,
    commands: mpsc::Receiver<Command>,
    priority: mpsc::UnboundedReceiver<Priority>,
    /// The current QEMU process, while there is one.
    run: Option<Run>,
    /// A stop in progress.
    stop: Option<PendingStop>,
    /// Live migration: progress, the outgoing task, the persisted role.
    migration: MigrationSlot,
}

struct Run {
    qemu: QemuProcess,
    qmp: Option<Qmp>,
    events: Option<broadcast::Receiver<QmpEvent>>,
    heartbeat: JoinHandle<()>,
    marker: MarkerFollower,
    stop_requested: bool,
    guest_powered_off: bool,
    /// How this QEMU's next memory snapshot gets its instant (from what its guest did).
    freeze: crate::snapshot::memory::FreezeChoice,
}

impl Drop for Run {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}

struct PendingStop {
    deadline: Instant,
    replies: Vec<Reply>,
    escalated: bool,
}

/// Something the running QEMU did.
enum Signal {
    Exited(ExitInfo),
    Event(QmpEvent),
    EventsClosed,
}

async fn next_signal(run: &mut Option<Run>) -> Signal {
    let Some(Run { qemu, events, .. }) = run else {
        return std::future::pending().await;
    };
    let event = async {
        let Some(rx) = events else {
            return std::future::pending().await;
        };
        loop {
            match rx.recv().await {
                Ok(ev) => return Signal::Event(ev),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "QMP events were missed");
                }
                Err(broadcast::error::RecvError::Closed) => return Signal::EventsClosed,
            }
        }
    };
    tokio::select! {
        exit = qemu.wait_exit() => Signal::Exited(exit),
        signal = event => signal,
    }
}

async fn stop_deadline(stop: &Option<PendingStop>) {
    match stop {
        Some(s) if !s.escalated => tokio::time::sleep_until(s.deadline).await,
        _ => std::future::pending().await,
    }
}

impl Actor {
    async fn run(mut self, adopt: Option<QemuProcess>, ready: oneshot::Sender<()>) {
        if let Some(qemu) = adopt {
            self.attach(qemu, None, false).await;
            self.adopt_ports().await;
        }
        self.reconcile_migration().await;
        let _ = ready.send(());
        let mut tick = tokio::time::interval(MARKER_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                biased;
                p = self.priority.recv() => {
                    match p {
                        Some(Priority::Kill(ack)) => {
                            self.kill_now().await;
                            let _ = ack.send(());
                        }
                        Some(Priority::Detach(ack)) => {
                            self.detach();
                            let _ = ack.send(());
                        }
                        None => self.detach(),
                    }
                    return;
                }
                signal = next_signal(&mut self.run) => match signal {
                    Signal::Exited(exit) => {
                        self.take_last_events().await;
                        self.on_exit(exit);
                    }
                    Signal::Event(ev) => self.on_event(ev),
                    Signal::EventsClosed => {
                        if let Some(run) = &mut self.run {
                            run.events = None;
                        }
                    }
                },
                () = stop_deadline(&self.stop) => self.escalate_stop(false).await,
                outcome = migrate::outgoing_end(&mut self.migration) => {
                    self.on_outgoing_end(outcome).await;
                }
                cmd = self.commands.recv() => match cmd {
                    Some(Command::Start(reply)) => {
                        let r = self.start().await;
                        let _ = reply.send(r);
                    }
                    Some(Command::Stop(req, reply)) => self.stop(req, reply).await,
                    Some(Command::Reboot(reply)) => {
                        let r = self.reboot().await;
                        let _ = reply.send(r);
                    }
                    Some(Command::Receive(plan, reply)) => {
                        let r = self.receive(plan).await;
                        let _ = reply.send(r);
                    }
                    Some(Command::Migrate(req, reply)) => {
                        let r = self.migrate_start(req).await;
                        let _ = reply.send(r);
                    }
                    Some(Command::CancelMigration(reply)) => self.migrate_cancel(reply).await,
                    Some(Command::TakeSnapshot(plan, reply)) => {
                        let memory = plan.stream.is_some();
                        let r = self.take_snapshot(plan).await;
                        let _ = reply.send(r);
                        if memory {
                            self.background_snapshot_off().await;
                        }
                    }
                    Some(Command::Restore(plan, reply)) => {
                        let r = self.restore(plan).await;
                        let _ = reply.send(r);
                    }
                    Some(Command::StreamLayer(plan, reply)) => {
                        let r = self.stream_layer(plan).await;
                        let _ = reply.send(r);
                    }
                    Some(Command::FlushDisks(reply)) => {
                        let r = self.flush_disks().await;
                        let _ = reply.send(r);
                    }
                    None => {
                        self.detach();
                        return;
                    }
                },
                _ = tick.tick() => {
                    self.poll_ready();
                    self.poll_heartbeat();
                    self.poll_receiving().await;
                }
            }
        }
    }

    /// Applies a change to the status, bumps the generation and persists it.
    fn update(&self, change: impl FnOnce(&mut CoreStatus)) {
        self.status.send_modify(|s| {
            change(s);
            if !s.guest_ready {
                s.ready_via = None;
            }
            s.generation += 1;
        });
        let snapshot = self.status.borrow().clone();
        if let Err(e) = self.dir.write_state(&snapshot) {
            tracing::warn!(error = %e.chain(), "cannot persist VM state");
        }
    }

    fn on_event(&mut self, ev: QmpEvent) {
        match ev.kind {
            EventKind::Reset { guest, reason } => {
                tracing::info!(guest, reason, "guest reset");
                self.restart_marker();
            }
            EventKind::Shutdown { guest, reason } => {
                tracing::info!(guest, reason, "guest shut down");
                if let Some(run) = &mut self.run {
                    run.guest_powered_off |= guest;
                }
            }
            EventKind::Resume => self.on_resume(ev.timestamp),
            EventKind::Migration { status } => self.on_migration_status(&status),
            _ => tracing::debug!(event = ev.name(), "QMP event"),
        }
    }

    /// The guest (re)boots: it is not ready until it prints the marker (or reports) again.
    fn restart_marker(&mut self) {
        let offset = self.dir.console_len();
        if let Some(run) = &mut self.run {
            run.marker.restart(offset);
        }
        self.update(|s| {
            s.guest_ready = false;
            s.console_offset = offset;
            s.booted_unix_ms = ready::unix_ms_now();
        });
    }

    /// QEMU sends its last events (a guest's power-off) just before it exits, and its exit
    /// can be seen first: what is still on its way is handled before the exit is judged.
    /// Waits only for a QEMU that exited unasked and without a power-off seen, until one is
    /// seen or the events end, at most [`LAST_EVENTS_WAIT`].
    async fn take_last_events(&mut self) {
        let deadline = Instant::now() + LAST_EVENTS_WAIT;
        loop {
            let Some(run) = self.run.as_mut() else { return };
            if run.stop_requested || run.guest_powered_off {
                return;
            }
            let Some(rx) = run.events.as_mut() else {
                return;
            };
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Ok(ev)) => self.on_event(ev),
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
                Ok(Err(broadcast::error::RecvError::Closed)) | Err(_) => return,
            }
        }
    }

    fn on_exit(&mut self, exit: ExitInfo) {
        let Some(run) = self.run.take() else { return };
        let tail = log_tail(&self.dir.paths().qemu_log());
        let (new_state, reason) =
            crate::migration::after_exit(&self.status.borrow(), run.stop_requested, exit, &tail)
                .unwrap_or_else(|| {
                    state::after_exit(run.stop_requested, run.guest_powered_off, exit, &tail)
                });
        drop(run);
        if new_state == VmRunState::Crashed {
            tracing::warn!(reason = reason.as_deref().unwrap_or(""), "VM crashed");
        } else {
            tracing::info!(%exit, "VM stopped");
        }
        self.update(|s| {
            s.state = new_state;
            s.reason = reason;
            s.pid = None;
            s.guest_ready = false;
            s.started_at = None;
            s.incoming = false;
            if new_state == VmRunState::Stopped {
                s.intent = Intent::Stop;
            }
        });
        if let Some(stop) = self.stop.take() {
            for reply in stop.replies {
                let _ = reply.send(Ok(()));
            }
        }
    }

    /// A live QMP connection, reconnecting if the previous one ended.
    async fn qmp(&mut self) -> Option<Qmp> {
        let run = self.run.as_mut()?;
        if let Some(q) = run.qmp.as_ref().filter(|q| !q.is_closed()) {
            return Some(q.clone());
        }
        match Qmp::connect(&self.dir.paths().qmp_sock(), QMP_TIMEOUT).await {
            Ok(q) => {
                run.events = Some(q.events());
                run.qmp = Some(q.clone());
                Some(q)
            }
            Err(e) => {
                tracing::warn!(error = error_chain(&e), "QMP unavailable");
                None
            }
        }
    }
}
