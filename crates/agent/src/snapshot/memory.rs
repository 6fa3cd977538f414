//! QEMU's side of a checkpoint: the short pause in which the disk layer is frozen and a
//! background snapshot of memory starts, and the load of a memory image into a new QEMU.
//!
//! A background snapshot (`background-snapshot` migration capability) saves CPU and device
//! state while the VM is stopped, write-protects guest RAM (userfaultfd) and resumes it; RAM
//! is then written while the guest runs, a page being copied first when the guest is about
//! to change it. So memory is as of the pause, like the disk layer frozen in the same pause.
//! The disk must be frozen as of the same instant: either QEMU pauses the VM itself and the
//! disk is frozen after, if the guest provably did not write to it meanwhile, or we stop the
//! VM first and QEMU leaves it paused (see [`FreezeChoice`]).
//! Measured here (QEMU 10.0, TCG, 512 MiB): the VM pause is a few milliseconds.
//! (`mapped-ram` would give fixed offsets, but QEMU 10.0 cannot load a background snapshot
//! written with it: "error while loading state ... kvm-tpr-opt". Content-defined chunks
//! make the plain stream deduplicate instead.)

use crate::error::{error_chain, Error, Result};
use nimbus_qemu::qmp::{EventKind, QmpEvent};
use nimbus_qemu::{Qmp, QmpError};
use std::path::Path;
use std::time::Duration;
use tokio::sync::broadcast;
use tokio::time::Instant;

/// Capabilities that must be off for a background snapshot (a VM that arrived by migration
/// may have them on).
const INCOMPATIBLE: [&str; 5] = [
    "postcopy-ram",
    "multifd",
    "auto-converge",
    "pause-before-switchover",
    "xbzrle",
];
/// Longest a memory image may take to write.
const WRITE_TIMEOUT: Duration = Duration::from_secs(600);
/// Longest a memory image may take to load.
const LOAD_TIMEOUT: Duration = Duration::from_secs(300);

/// Where in its file QEMU writes a memory image (`file:` URI's `offset`): not at 0, because
/// QEMU truncates the file to that offset first, and on ext4 a file truncated to nothing is
/// written out to disk when its first descriptor closes (`auto_da_alloc`). The chunker's
/// close paid that, 30-60 ms for an idle 512 MiB guest's image, to write out a file that is
/// deleted once stored. (Images assembled for a restore are plain streams from 0.)
pub const IMAGE_OFFSET: u64 = 4096;

/// The migration URI that writes a memory image to `path` (see [`IMAGE_OFFSET`]).
pub fn image_uri(path: &Path) -> String {
    format!("file:{},offset={IMAGE_OFFSET}", path.display())
}

/// Turns the background snapshot capability on or off (and what conflicts with it off).
pub async fn set_background(qmp: &Qmp, on: bool) -> Result<(), QmpError> {
    let mut caps: Vec<(&str, bool)> = INCOMPATIBLE.iter().map(|c| (*c, false)).collect();
    caps.push(("background-snapshot", on));
    // MIGRATION events tell when the image is complete (see [`wait_written`]).
    caps.push(("events", true));
    qmp.migrate_set_capabilities(&caps).await?;
    if on {
        // A VM that migrated may keep its last migration's TLS parameters, naming
        // credentials that are gone; a snapshot into a local file needs none.
        let plain = crate::migration::tls::client_parameters(Default::default());
        qmp.migrate_set_parameters(&plain).await?;
    }
    Ok(())
}

/// Waits, on a VM we paused, until the background snapshot started by `migrate` has saved
/// the device state and write-protected RAM (pages are being written), so that the VM may
/// resume. `events` must have been subscribed before the `migrate`. Answers how long QEMU
/// took from `setup` to `active` (touching RAM), when its events said.
///
/// QEMU's migration thread first touches every page of RAM without QEMU's big lock, then
/// announces `active` and, under the lock, saves the device state and write-protects RAM.
/// Asking `query-migrate` over and over meanwhile would take a core and the lock from that
/// thread (the host may have two cores), so the asking starts at `active`: the first answer
/// then comes once the lock is released, when pages are about to flow.
pub async fn wait_flowing(
    qmp: &Qmp,
    events: &mut broadcast::Receiver<QmpEvent>,
) -> Result<Option<Duration>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut setup, mut preparation, mut listening) = (None, None, true);
    loop {
        if listening {
            // Events can be missed: without one within 20 ms, QEMU is asked from then on.
            match next_migration_event(events, Duration::from_millis(20)).await {
                Some((status, at)) if status == "setup" => {
                    setup = Some(at);
                    continue;
                }
                Some((_, at)) => {
                    let micros = setup.map_or(0, |s: i64| (at - s).max(0) as u64);
                    preparation = Some(Duration::from_micros(micros));
                }
                None => {}
            }
            listening = false;
        }
        let info = qmp.query_migrate().await?;
        let status = info.status.as_deref().unwrap_or("");
        let ram = info.ram.unwrap_or_default();
        if ram.normal + ram.duplicate > 0 || status == "completed" {
            return Ok(preparation);
        }
        if status == "failed" || status == "cancelled" {
            return Err(Error::QemuFailed(format!(
                "the memory snapshot failed: {}",
                info.error_desc.unwrap_or_else(|| status.to_string())
            )));
        }
        if Instant::now() > deadline {
            return Err(Error::Timeout(
                "QEMU did not start writing the memory snapshot".into(),
            ));
        }
        // No sleep: the round trip of the next query is the wait (a tokio timer would add a
        // millisecond per turn, all of it inside the VM's pause).
    }
}

/// Waits, after `migrate` on the running VM, until QEMU's migration thread has paused the
/// VM itself, saved its state, write-protected RAM and resumed it (its RESUME after its
/// STOP on `events`, subscribed before the `migrate`): the memory image is then as of that
/// pause, as in QEMU's own background snapshot. Fails if the snapshot fails first. Events
/// can be missed, so QEMU is also asked every 20 ms without one: pages flowing means the
/// thread's pause is over or ending, and the VM running after that means it is over.
pub async fn wait_qemu_paused_and_resumed(
    qmp: &Qmp,
    events: &mut broadcast::Receiver<QmpEvent>,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut stopped = false;
    loop {
        match next_event(events, Duration::from_millis(20))
            .await
            .map(|e| e.kind)
        {
            Some(EventKind::Stop) => stopped = true,
            Some(EventKind::Resume) if stopped => return Ok(()),
            Some(EventKind::Migration { status })
                if status == "failed" || status == "cancelled" =>
            {
                return Err(Error::QemuFailed(format!("the memory snapshot {status}")))
            }
            Some(_) => {}
            None => {
                let info = qmp.query_migrate().await?;
                let status = info.status.as_deref().unwrap_or("");
                if status == "failed" || status == "cancelled" {
                    return Err(Error::QemuFailed(format!(
                        "the memory snapshot failed: {}",
                        info.error_desc.unwrap_or_else(|| status.to_string())
                    )));
                }
                let ram = info.ram.unwrap_or_default();
                let flowing = ram.normal + ram.duplicate > 0 || status == "completed";
                if flowing && qmp.query_status().await?.status == "running" {
                    return Ok(());
                }
            }
        }
        if Instant::now() > deadline {
            return Err(Error::Timeout(
                "QEMU did not pause and resume the VM for its memory snapshot".into(),
            ));
        }
    }
}

/// How a memory snapshot of a running VM gets its instant, chosen per QEMU process.
///
/// - **Disk after** (preferred): `migrate` on the running VM, so that QEMU pauses the VM
///   itself, with its preparation of RAM before the pause, as in its own background
///   snapshot (the anchor); the memory image is as of that pause. Then, the VM running,
///   the disk is frozen (`blockdev-snapshot`), and that is kept only if the guest wrote
///   nothing to its disk from before the `migrate` until after the switch (its
///   [`nimbus_qemu::qmp::GuestWrites`] equal, and no I/O error): the frozen layer then is
///   the disk of QEMU's instant, and the VM's only pause was QEMU's. Otherwise nothing is
///   kept (a switch already made is merged back) and the snapshot is taken again,
///   stopping first.
/// - **Stop first**: we stop the VM, then `migrate` and `blockdev-snapshot` in one batch;
///   QEMU leaves a VM it found paused paused, so memory and disk are as of our stop, and
///   the preparation of RAM falls inside the pause.
///
/// A guest seen writing in that window makes the next snapshots of its QEMU stop first:
/// one after the first time, then 3, 7... (up to 63) while it keeps writing.
#[derive(Debug, Default)]
pub struct FreezeChoice {
    writes_seen: u32,
    stop_first_left: u32,
}

impl FreezeChoice {
    /// Whether the next snapshot freezes the disk after QEMU's pause (else it stops first).
    pub fn disk_after(&mut self) -> bool {
        match self.stop_first_left {
            0 => true,
            _ => {
                self.stop_first_left -= 1;
                false
            }
        }
    }

    /// A snapshot froze the disk after QEMU's pause.
    pub fn frozen_after(&mut self) {
        self.writes_seen = 0;
    }

    /// The guest wrote to its disk in the window: the next snapshots stop first.
    pub fn writes_seen(&mut self) {
        self.writes_seen = (self.writes_seen + 1).min(6);
        self.stop_first_left = (1 << self.writes_seen) - 1;
    }
}

/// Cancels a memory snapshot in progress and waits (bounded) until QEMU has let go of it.
pub async fn cancel(qmp: &Qmp) {
    let _ = qmp.migrate_cancel().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match qmp.query_migrate().await.map(|i| i.status) {
            Ok(Some(s)) if s == "active" || s == "setup" || s == "cancelling" => {}
            _ => return,
        }
        // Short: a failed snapshot may hold the VM paused while this runs.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits for the memory image to be complete on disk. QEMU's MIGRATION event `completed`
/// (on `events`, subscribed before the `migrate`) is enough: QEMU sets that state after the
/// image's last bytes were written out. It is believed at once, because QEMU's main loop
/// then cleans the snapshot up (for a guest whose huge pages a first snapshot split,
/// 40-60 ms here) and a `query-migrate` would wait for that. Events can be missed, so
/// `query-migrate` is asked too: after each event, and at least every 50 ms.
pub async fn wait_written(qmp: &Qmp, events: &mut broadcast::Receiver<QmpEvent>) -> Result<()> {
    wait_migration(
        qmp,
        WRITE_TIMEOUT,
        "writing the memory snapshot",
        Some(events),
    )
    .await
}

/// Loads a memory image into a QEMU started with `-incoming defer`; the VM is paused after.
pub async fn load(qmp: &Qmp, stream: &Path) -> Result<()> {
    qmp.migrate_incoming(&format!("file:{}", stream.display()))
        .await?;
    wait_migration(qmp, LOAD_TIMEOUT, "loading the memory snapshot", None).await
}

/// Polls `query-migrate` until the migration completed (or failed); with `events`, between
/// polls it sleeps only until QEMU's next MIGRATION event.
async fn wait_migration(
    qmp: &Qmp,
    limit: Duration,
    what: &str,
    mut events: Option<&mut broadcast::Receiver<QmpEvent>>,
) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let info = qmp.query_migrate().await.map_err(|e| {
            Error::QemuFailed(format!("QEMU failed while {what}: {}", error_chain(&e)))
        })?;
        match info.status.as_deref() {
            Some("completed") => return Ok(()),
            Some(s @ ("failed" | "cancelled")) => {
                return Err(Error::QemuFailed(format!(
                    "QEMU failed while {what}: {}",
                    info.error_desc.unwrap_or_else(|| s.to_string())
                )))
            }
            _ => {}
        }
        if Instant::now() > deadline {
            return Err(Error::Timeout(format!("{what} took longer than {limit:?}")));
        }
        match events.as_deref_mut() {
            Some(events) => {
                let event = next_migration_event(events, Duration::from_millis(50)).await;
                if event.is_some_and(|(status, _)| status == "completed") {
                    return Ok(());
                }
            }
            None => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

/// QEMU's next MIGRATION event: its status and timestamp (µs), or `None` after `at_most`
/// without one (events can be missed: the caller polls anyway).
async fn next_migration_event(
    events: &mut broadcast::Receiver<QmpEvent>,
    at_most: Duration,
) -> Option<(String, i64)> {
    let deadline = Instant::now() + at_most;
    loop {
        let event = next_event(events, deadline.saturating_duration_since(Instant::now())).await?;
        if let EventKind::Migration { status } = event.kind {
            return Some((status, event.timestamp.as_micros()));
        }
    }
}

/// QEMU's next event, or `None` after `at_most` without one (those lost to a lag skipped).
async fn next_event(
    events: &mut broadcast::Receiver<QmpEvent>,
    at_most: Duration,
) -> Option<QmpEvent> {
    let next = async {
        loop {
            match events.recv().await {
                Ok(event) => return event,
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
            }
        }
    };
    tokio::time::timeout(at_most, next).await.ok()
}

/// How long the VM was paused, in milliseconds, once our `cont` was answered: each STOP to
/// the next RESUME event on `events` (subscribed before the pause; QEMU's timestamps),
/// summed. Usually one pause; two when a guest seen writing made the snapshot be taken
/// again. QEMU sends events before the answers that follow them, so all are here already;
/// 0 when no pause was seen.
pub fn pause_from_events(events: &mut broadcast::Receiver<QmpEvent>) -> f64 {
    let (mut paused_us, mut stop) = (0, None);
    for ev in received(events) {
        match (&ev.kind, stop) {
            (EventKind::Stop, None) => stop = Some(ev.timestamp.as_micros()),
            (EventKind::Resume, Some(s)) => {
                paused_us += (ev.timestamp.as_micros() - s).max(0);
                stop = None;
            }
            _ => {}
        }
    }
    paused_us as f64 / 1000.0
}

/// The events already received on `events`, without waiting (those lost to a lag skipped).
pub fn received(events: &mut broadcast::Receiver<QmpEvent>) -> impl Iterator<Item = QmpEvent> + '_ {
    std::iter::from_fn(|| loop {
        match events.try_recv() {
            Ok(event) => return Some(event),
            Err(broadcast::error::TryRecvError::Lagged(_)) => continue,
            Err(_) => return None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: EventKind, micros: i64) -> QmpEvent {
        QmpEvent {
            timestamp: nimbus_qemu::qmp::QmpTimestamp {
                seconds: 1_700_000_000 + micros / 1_000_000,
                microseconds: micros % 1_000_000,
            },
            kind,
        }
    }

    #[test]
    fn every_pause_until_our_resume_counts() {
        let (tx, mut rx) = broadcast::channel(16);
        // One pause: STOP to RESUME.
        for ev in [event(EventKind::Stop, 100), event(EventKind::Resume, 5_100)] {
            tx.send(ev).expect("send");
        }
        assert_eq!(pause_from_events(&mut rx), 5.0);
        // A snapshot taken again: QEMU's own pause, then ours, stopping first.
        for ev in [
            event(EventKind::Stop, 1_000_000),
            event(EventKind::Resume, 1_004_000),
            event(EventKind::Stop, 1_004_500),
            event(EventKind::Resume, 1_011_000),
        ] {
            tx.send(ev).expect("send");
        }
        assert_eq!(pause_from_events(&mut rx), 10.5);
        // No RESUME: nothing measured.
        tx.send(event(EventKind::Stop, 2_000_000)).expect("send");
        assert_eq!(pause_from_events(&mut rx), 0.0);
    }

    #[test]
    fn a_guest_seen_writing_makes_the_next_snapshots_stop_first_for_longer_each_time() {
        let mut choice = FreezeChoice::default();
        assert!(choice.disk_after());
        choice.writes_seen();
        assert!(!choice.disk_after());
        assert!(choice.disk_after());
        choice.writes_seen();
        assert_eq!(
            (0..4).map(|_| choice.disk_after()).collect::<Vec<_>>(),
            [false, false, false, true]
        );
        // Once frozen after, a later write backs off from one again.
        choice.frozen_after();
        choice.writes_seen();
        assert_eq!(
            (0..2).map(|_| choice.disk_after()).collect::<Vec<_>>(),
            [false, true]
        );
        for _ in 0..20 {
            choice.writes_seen();
        }
        assert_eq!((0..64).filter(|_| !choice.disk_after()).count(), 63);
    }
}
