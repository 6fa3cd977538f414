//! Metering: what each VM uses on this host, sampled and pushed to the controller.
//!
//! - [`meter`]: one meter per VM incarnation on this host (pure state machine, persisted in
//!   `<vm dir>/meter.json`): opens when the guest starts running here, samples cumulative
//!   counters every interval, closes with a last sample when the guest stops running here.
//! - [`storage`]: the disk meter of a VM, open while the VM is defined here (running or not),
//!   persisted in the same file.
//! - [`probe`]: the live figures (procfs of the QEMU process, the disk's allocated blocks,
//!   the taps' byte counters).
//! - [`outbox`]: samples waiting for the controller, persisted, pushed in batches.
//!
//! One watcher task per VM follows its status channel, so a stop, a delete or a migration
//! away closes the meter at once (a migration's source closes at its STOP event, the target
//! opens at its RESUME event: the two never overlap). A target waiting for its guest
//! (`incoming`) and a source paused after switch-over (`migrated`) are not running, so they
//! are not metered.
//!
//! Why push: the agent measures at its own pace whatever the number of controllers, keeps
//! what it measured while the controller is down, and the controller stores each sample once
//! (its key is `(meter_id, seq)`), so resending after a lost answer is harmless.

pub mod meter;
pub mod outbox;
pub mod probe;
pub mod storage;

use crate::agent::Agent;
use crate::instance::files::{read_json, write_json};
use crate::instance::state::CoreStatus;
use crate::instance::VmHandle;
use meter::{MeterState, Occasion, VmView};
use nimbus_agent_api::{MeterKind, VmRunState};
use outbox::Outbox;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use storage::{DiskMeter, DiskView};
use uuid::Uuid;

/// Default sampling interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// How often new VMs are looked for.
const DISCOVER_EVERY: Duration = Duration::from_millis(500);

/// How the agent meters.
#[derive(Debug, Clone, PartialEq)]
pub struct MeteringConfig {
    /// Time between two samples of a running VM (and between two pushes).
    pub interval: Duration,
}

impl Default for MeteringConfig {
    fn default() -> Self {
        Self {
            interval: DEFAULT_INTERVAL,
        }
    }
}

/// The meters of one VM, as persisted in its `meter.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VmMeters {
    /// While the guest runs here.
    pub compute: MeterState,
    /// While the VM (its disk) is here.
    #[serde(default)]
    pub disk: DiskMeter,
    /// While the VM has snapshots here: the bytes they hold.
    #[serde(default)]
    pub snapshots: DiskMeter,
}

impl VmMeters {
    fn is_closed(&self) -> bool {
        self.compute.open.is_none() && self.disk.open.is_none() && self.snapshots.open.is_none()
    }
}

/// The file of the meter in a VM's directory.
fn meter_file(handle: &VmHandle) -> PathBuf {
    handle.dir().dir().join("meter.json")
}

/// Watches every VM of the agent (those defined later too), forever; abort to stop.
pub async fn run(agent: Agent, outbox: Arc<Outbox>, config: MeteringConfig) {
    // The handle each watcher follows: a VM deleted and defined again (a migration back to
    // this host) is a new handle with the same id and gets a watcher of its own.
    let mut watched: HashMap<Uuid, (Arc<VmHandle>, tokio::task::JoinHandle<()>)> = HashMap::new();
    let mut discover = tokio::time::interval(DISCOVER_EVERY);
    loop {
        discover.tick().await;
        watched.retain(|_, (_, task)| !task.is_finished());
        for handle in agent.manager().handles() {
            let known = watched
                .get(&handle.id())
                .is_some_and(|(h, _)| Arc::ptr_eq(h, &handle));
            if !known {
                // The watcher of the VM's previous incarnation may still write its last state:
                // the new one waits for it, so their writes of `meter.json` never interleave.
                let previous = watched.remove(&handle.id()).map(|(_, task)| task);
                let watcher = watch_vm(handle.clone(), outbox.clone(), config.interval);
                let task = tokio::spawn(after(previous, watcher));
                watched.insert(handle.id(), (handle, task));
            }
        }
    }
}

/// How long a VM's new watcher waits for the previous one to end (it ends when the old
/// actor's status channel closes, which a delete does at once).
const PREVIOUS_WATCHER_GRACE: Duration = Duration::from_secs(10);

/// Runs `watcher` once `previous` has ended (aborted after [`PREVIOUS_WATCHER_GRACE`]).
async fn after(
    previous: Option<tokio::task::JoinHandle<()>>,
    watcher: impl std::future::Future<Output = ()>,
) {
    if let Some(mut previous) = previous {
        if tokio::time::timeout(PREVIOUS_WATCHER_GRACE, &mut previous)
            .await
            .is_err()
        {
            tracing::warn!("the meter of a VM's previous incarnation did not end; stopping it");
            previous.abort();
            let _ = previous.await;
        }
    }
    watcher.await;
}

/// Follows one VM until its actor ends (delete, or agent shutdown).
async fn watch_vm(handle: Arc<VmHandle>, outbox: Arc<Outbox>, every: Duration) {
    let path = meter_file(&handle);
    let mut state: VmMeters = read_json(&path)
        .unwrap_or_else(|e| {
            tracing::warn!(instance_id = %handle.id(), error = %e.chain(), "meter file unreadable; opening a new meter");
            None
        })
        .unwrap_or_default();
    let mut status = handle.subscribe();
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut occasion = Occasion::Resume;
    loop {
        let core = status.borrow_and_update().clone();
        step(&handle, &core, &mut state, occasion, &path, &outbox);
        tokio::select! {
            _ = tick.tick() => occasion = Occasion::Tick,
            changed = status.changed() => {
                if changed.is_err() {
                    // The actor ended: killed for a delete (its last status is not running:
                    // the meter closes) or detached at agent shutdown (QEMU runs on: the
                    // meter stays open for the next agent).
                    let core = status.borrow().clone();
                    step(&handle, &core, &mut state, Occasion::Change, &path, &outbox);
                    return;
                }
                occasion = Occasion::Change;
            }
        }
    }
}

fn step(
    handle: &VmHandle,
    core: &CoreStatus,
    state: &mut VmMeters,
    occasion: Occasion,
    path: &std::path::Path,
    outbox: &Outbox,
) {
    let view = view_of(handle, core);
    let now = probe::now_ms();
    let reading = core.pid.and_then(|pid| {
        probe::read(
            handle.id(),
            handle.spec().nics.len(),
            pid,
            handle.dir(),
            now,
        )
    });
    let before = state.clone();
    let mut samples = state.compute.observe(&view, reading, now, occasion);
    let disk = disk_view_of(handle, core, &view);
    let bytes = handle.dir().disk_allocated_bytes();
    samples.extend(state.disk.observe(&disk, bytes, now, occasion));
    let held = crate::snapshot::stored_bytes_of(handle.dir());
    let snapshots = DiskView {
        kind: MeterKind::Snapshot,
        present: disk.present && held > 0,
        ..disk
    };
    samples.extend(state.snapshots.observe(&snapshots, held, now, occasion));
    if *state != before {
        persist(path, state);
    }
    outbox.add(samples);
}

/// Writes the meter; a closed meter's file is removed (the directory may be going away).
fn persist(path: &std::path::Path, state: &VmMeters) {
    let result = if !state.is_closed() {
        write_json(path, state)
    } else {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(crate::error::Error::io("remove", path)(e))
            }
            _ => Ok(()),
        }
    };
    if let Err(e) = result {
        tracing::warn!(path = %path.display(), error = %e.chain(), "cannot persist the meter; it is kept in memory and written at its next change");
    }
}

/// What the meter needs of the VM's status.
fn view_of(handle: &VmHandle, core: &CoreStatus) -> VmView {
    let started = core
        .started_at
        .and_then(|t| u64::try_from(t.timestamp_millis()).ok());
    let run_started_ms = match (started, core.resumed_unix_ms) {
        (Some(s), Some(r)) => Some(s.max(r)),
        (s, r) => s.or(r),
    };
    let run_ended_ms = (core.state == VmRunState::Migrated)
        .then(|| handle.migration().stopped_unix_ms)
        .flatten();
    VmView {
        instance_id: handle.id(),
        vcpus: handle.spec().vcpus,
        memory_mib: handle.spec().memory_mib,
        running: core.state == VmRunState::Running && !core.incoming,
        pid: core.pid,
        run_started_ms,
        run_ended_ms,
    }
}

/// What the disk meter needs of the VM: its disk is billed here unless the VM is deleted,
/// waits for an incoming migration, or migrated away (then ending at the switch-over).
fn disk_view_of(handle: &VmHandle, core: &CoreStatus, vm: &VmView) -> DiskView {
    DiskView {
        kind: MeterKind::Disk,
        instance_id: vm.instance_id,
        vcpus: vm.vcpus,
        memory_mib: vm.memory_mib,
        present: !handle.is_deleted() && !core.incoming && core.state != VmRunState::Migrated,
        ended_ms: vm.run_ended_ms,
    }
}
