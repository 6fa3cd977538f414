//! Replication of snapshots off their hosts (issue 14, part 4): every few seconds, the
//! snapshots of `--ha restart` instances with a local disk that have no replica yet are
//! copied into the controller's replica store ([`crate::app::replicas`]), in the background
//! (the guest and the snapshot operation never wait for it).
//!
//! Per instance, one stream from its host, as a move asks a target: the chunks the store
//! lacks (by digest), the frozen layers it does not hold (by name), every manifest; checked
//! frame by frame, kept only when complete. The transfer is bounded in rate
//! ([`MAX_RATE`], so replication does not starve the host's or the controller's other
//! traffic) and gives up when the host sends nothing for the stall bound (10 s); a failed or
//! cut replication leaves nothing and is tried again later: after 2 s, then twice as long
//! after each further failure of the same instance, up to [`MAX_RETRY_DELAY`] ([`Retries`]),
//! so a host that keeps failing is not asked for its whole set every 2 s forever.
//!
//! Replicas are not billed again: a snapshot's storage is metered once, on its
//! `stored_bytes`.
//!
//! One controller at a time runs it, into its own replica store (under its blob dir), and
//! records itself as the replicas' holder; every other controller then copies them
//! (`background::replica_copies`, which also sweeps each store after a snapshot is deleted),
//! so any live controller can run the restart (docs/control-plane.md).

use crate::app::replicas::receive::Received;
use crate::app::App;
use crate::background::task::{PassError, Run, Task};
use crate::ops::snapshot_move::{stall_bounded, STALL_BOUND};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;
use tokio::time::Instant;
use uuid::Uuid;

/// Highest rate a replication reads from a host, bytes per second.
pub const MAX_RATE: u64 = 64 << 20;

/// Time between two passes.
const INTERVAL: Duration = Duration::from_secs(2);

/// Longest wait before a replication that keeps failing is tried again.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(64);

/// The replication task; remembers the instances whose replication failed, to try them
/// again later.
#[derive(Default)]
pub struct Replication {
    retries: Retries,
}

/// When instances whose replication failed are tried again: after [`INTERVAL`], doubled at
/// each further failure up to [`MAX_RETRY_DELAY`]; forgotten after a success.
#[derive(Debug, Default)]
pub struct Retries {
    /// Per instance: failures in a row and when it may be tried again.
    failed: HashMap<Uuid, (u32, Instant)>,
}

impl Retries {
    /// Whether `vm` may be tried at `now`.
    pub fn due(&self, vm: Uuid, now: Instant) -> bool {
        self.failed.get(&vm).is_none_or(|(_, next)| *next <= now)
    }

    /// Records a failure of `vm` at `now`; answers the wait before the next attempt.
    pub fn failed(&mut self, vm: Uuid, now: Instant) -> Duration {
        let failures = self.failed.get(&vm).map_or(0, |(n, _)| *n) + 1;
        let delay = INTERVAL
            .saturating_mul(1 << failures.saturating_sub(1).min(16))
            .min(MAX_RETRY_DELAY);
        self.failed.insert(vm, (failures, now + delay));
        delay
    }

    /// `vm` was replicated (or needs nothing): its next failure starts over.
    pub fn succeeded(&mut self, vm: Uuid) {
        self.failed.remove(&vm);
    }

    /// Forgets instances no longer to replicate (deleted, moved to shared storage, no HA).
    pub fn keep_only(&mut self, vms: &BTreeSet<Uuid>) {
        self.failed.retain(|vm, _| vms.contains(vm));
    }
}

#[async_trait::async_trait]
impl Task for Replication {
    const NAME: &'static str = "replication";
    const RUN: Run = Run::OneController;

    fn interval(&self, _app: &App) -> Duration {
        INTERVAL
    }

    async fn pass(&mut self, app: &App) -> Result<(), PassError> {
        let todo = app.store().instances_to_replicate().await?;
        self.retries
            .keep_only(&todo.iter().map(|(vm, _)| *vm).collect());
        for (vm, host) in todo {
            let started = Instant::now();
            if !self.retries.due(vm, started) {
                continue;
            }
            match replicate(app, vm, &host).await {
                Ok(got) => {
                    self.retries.succeeded(vm);
                    for sid in &got.snapshots {
                        app.store()
                            .add_replica_holder(*sid, app.controller_id())
                            .await?;
                        app.store()
                            .mark_snapshot_replicated(*sid, got.bytes())
                            .await?;
                    }
                    tracing::info!(instance_id = %vm, %host, snapshots = got.snapshots.len(),
                        layers = got.layers, layer_bytes = got.layer_bytes, chunks = got.chunks,
                        chunk_bytes = got.chunk_bytes, ms = started.elapsed().as_millis() as u64,
                        "snapshots replicated to the controller");
                }
                Err(e) => {
                    let retry_in = self.retries.failed(vm, Instant::now());
                    tracing::warn!(instance_id = %vm, %host, error = %e, ?retry_in, "replicating snapshots failed; trying again later")
                }
            }
        }
        Ok(())
    }
}

/// Copies what the store lacks of the snapshots of `vm` from `host`.
pub async fn replicate(app: &App, vm: Uuid, host: &str) -> Result<Received, String> {
    let agent = app.agent_of(host).await.map_err(|e| e.message)?;
    let inventory = agent.snapshot_set(vm).await.map_err(|e| e.to_string())?;
    let req = app.replicas().wanted(vm, &inventory.chunks);
    let response = agent
        .export_snapshot_set(vm, &req)
        .await
        .map_err(|e| e.to_string())?;
    let bytes = rate_bounded(
        stall_bounded(response.bytes_stream(), STALL_BOUND),
        MAX_RATE,
    );
    let mut reader = tokio_util::io::StreamReader::new(Box::pin(bytes));
    app.replicas()
        .receive(vm, &mut reader)
        .await
        .map_err(|e| e.to_string())
}

/// `bytes`, slowed so that on average at most `rate` bytes per second pass.
fn rate_bounded<S>(bytes: S, rate: u64) -> impl Stream<Item = std::io::Result<Bytes>>
where
    S: Stream<Item = std::io::Result<Bytes>> + Send + 'static,
{
    let started = Instant::now();
    let mut sent = 0u64;
    bytes.then(move |piece| {
        if let Ok(p) = &piece {
            sent += p.len() as u64;
        }
        let due = started + Duration::from_secs_f64(sent as f64 / rate.max(1) as f64);
        async move {
            tokio::time::sleep_until(due).await;
            piece
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_replications_back_off_up_to_the_cap_and_start_over_after_a_success() {
        let (vm, other) = (Uuid::new_v4(), Uuid::new_v4());
        let mut retries = Retries::default();
        let now = Instant::now();
        assert!(retries.due(vm, now));
        let delays: Vec<u64> = (0..8).map(|_| retries.failed(vm, now).as_secs()).collect();
        assert_eq!(delays, [2, 4, 8, 16, 32, 64, 64, 64]);
        assert!(!retries.due(vm, now + Duration::from_secs(63)));
        assert!(retries.due(vm, now + MAX_RETRY_DELAY));
        assert!(retries.due(other, now), "another instance is not held back");
        retries.succeeded(vm);
        assert!(retries.due(vm, now));
        assert_eq!(retries.failed(vm, now), INTERVAL);
        retries.keep_only(&BTreeSet::from([other]));
        assert!(
            retries.due(vm, now),
            "an instance no longer replicated is forgotten"
        );
    }

    #[tokio::test]
    async fn the_rate_is_bounded() {
        let pieces: Vec<std::io::Result<Bytes>> =
            (0..10).map(|_| Ok(Bytes::from(vec![0u8; 100]))).collect();
        let started = Instant::now();
        let got: Vec<_> = rate_bounded(futures::stream::iter(pieces), 2000)
            .collect()
            .await;
        assert_eq!(got.len(), 10);
        // 1 000 bytes at 2 000 bytes/s: 0.5 s.
        assert!(
            started.elapsed() >= Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
    }
}
