//! Snapshots move with their instance (issue 14, part 1): the source's snapshot set (frozen
//! disk layers, manifests, the memory chunks the target lacks) is relayed to the target,
//! which checks every digest and takes it (see `nimbus_agent_api::snapshot_move`).
//!
//! Why through the controller: both agents already trust it over their authenticated agent
//! API (moving to mutual TLS), as for a cold migration's disk; no new socket, no trust
//! between agents. A live migration sends the set in two parts: the disk layers before the
//! target QEMU starts (it opens its disk on them; with shared storage only the name of the
//! top), and the manifests and the memory chunks (the bulk) in the background from the same
//! moment on: beside the layers, the target's start and the memory transfer, which waits for
//! it before the verification (see `migrate_steps::Transfer` and [`super::snapshot_copies`]),
//! so the move takes about as long as one without snapshots and the guest's downtime does
//! not change. A cold migration sends it all before the define.
//! Only what the target does not hold is sent (chunks by digest), in one stream of large
//! batches, and with shared storage the layers are not sent at all. Nothing is deleted on
//! the source before the commit: its copy goes with the source VM in `cleanup_source`; a
//! failed move deletes the target's copy with the target VM.

use super::migrate_steps::Route;
use super::steps::{agent_err, app_err};
use crate::app::App;
use nimbus_agent_api::{ExportSnapshotSet, MissingChunks, SnapshotSetInventory, SnapshotSetPart};
use nimbus_ops::{StepContext, StepError};
use serde_json::{json, Value};
use uuid::Uuid;

/// How the snapshot set of one move goes.
#[derive(Debug, Clone)]
pub(super) struct SnapshotMove {
    pub instance: Uuid,
    pub source: String,
    pub target: String,
    /// Both hosts see the disk layers on shared storage: they are not copied.
    pub shared: bool,
    /// A live migration: the top layer (the guest writes it) moves by the disk mirror.
    pub live: bool,
}

impl SnapshotMove {
    /// The set of a live migration on route `r`, once its disk transfer is recorded.
    pub fn live(instance: Uuid, r: &Route) -> Self {
        Self {
            instance,
            source: r.source.clone(),
            target: r.target.clone(),
            shared: r.shared(),
            live: true,
        }
    }

    /// What the source holds of the instance's snapshots: asked once per move, for both
    /// parts of a live one (each inventory reads every manifest and lists every chunk).
    pub async fn inventory(&self, app: &App) -> Result<SnapshotSetInventory, StepError> {
        let source = app.agent_of(&self.source).await.map_err(app_err)?;
        source.snapshot_set(self.instance).await.map_err(agent_err)
    }

    /// Starts copying the memory part of `inventory` in the background of operation `op`
    /// (see [`super::snapshot_copies`]); with no snapshots it ends at once, asking nothing.
    pub fn start_memory(&self, app: &App, op: Uuid, inventory: SnapshotSetInventory) {
        let (set, app_bg) = (self.clone(), app.clone());
        app.snapshot_copies().start(op, async move {
            let started = std::time::Instant::now();
            set.copy_of(&app_bg, None, SnapshotSetPart::Memory, inventory, started)
                .await
        });
    }

    /// Copies `part` of the set, saying so in `s`'s progress when given; `Value::Null` when
    /// nothing of it has to move (no snapshots, nor layers).
    pub async fn copy(
        &self,
        app: &App,
        s: Option<&StepContext<'_>>,
        part: SnapshotSetPart,
    ) -> Result<Value, StepError> {
        let started = std::time::Instant::now();
        let inventory = self.inventory(app).await?;
        self.copy_of(app, s, part, inventory, started).await
    }

    /// [`Self::copy`] of the set `inventory` lists (asked at `started`).
    pub async fn copy_of(
        &self,
        app: &App,
        s: Option<&StepContext<'_>>,
        part: SnapshotSetPart,
        inventory: SnapshotSetInventory,
        started: std::time::Instant,
    ) -> Result<Value, StepError> {
        let memory = part != SnapshotSetPart::Disk;
        if inventory.is_empty() || part == SnapshotSetPart::Memory && inventory.snapshots == 0 {
            return Ok(Value::Null);
        }
        let source = app.agent_of(&self.source).await.map_err(app_err)?;
        let target = app.agent_of(&self.target).await.map_err(app_err)?;
        let snapshots = inventory.snapshots;
        let (chunks, missing) = if memory {
            let listed = inventory.chunks.len() as u64;
            let asked = MissingChunks {
                chunks: inventory.chunks,
            };
            let missing = target.missing_chunks(&asked).await.map_err(agent_err)?;
            (listed, missing.chunks)
        } else {
            (0, Vec::new())
        };
        let asked = started.elapsed();
        let line = self.progress_line(part, snapshots, missing.len(), chunks);
        match s {
            Some(s) => s.progress(&line).await,
            None => tracing::info!(instance_id = %self.instance, "{line}"),
        }
        let req = ExportSnapshotSet {
            part,
            chunks: missing,
            layers: !self.shared,
            live: self.live,
            skip_layers: Vec::new(),
        };
        let stream = source
            .export_snapshot_set(self.instance, &req)
            .await
            .map_err(agent_err)?;
        let body = reqwest::Body::wrap_stream(stall_bounded(stream.bytes_stream(), STALL_BOUND));
        let got = target
            .import_snapshot_set(self.instance, part, body)
            .await
            .map_err(agent_err)?;
        if part == SnapshotSetPart::Memory && got.snapshots != snapshots {
            // A target that ignored the part (an older agent) would drop the snapshots.
            return Err(StepError::permanent(format!(
                "host {} took {} of the {} snapshots sent; upgrade its agent and retry",
                self.target, got.snapshots, snapshots
            )));
        }
        let ms = json!({
            "inventory": asked.as_millis() as u64,
            "stream": (started.elapsed() - asked).as_millis() as u64,
        });
        tracing::info!(instance_id = %self.instance, source = %self.source, target = %self.target, ?part, ?got, %ms, "snapshot set copied");
        Ok(json!({
            "ms": ms,
            "snapshots": got.snapshots,
            "layers": got.layers,
            "layer_bytes": got.layer_bytes,
            "chunks_sent": got.chunks,
            "chunks_skipped": chunks.saturating_sub(got.chunks),
            "chunk_bytes": got.chunk_bytes,
        }))
    }

    fn progress_line(
        &self,
        part: SnapshotSetPart,
        snapshots: u32,
        missing: usize,
        chunks: u64,
    ) -> String {
        let route = format!("from {} to {}", self.source, self.target);
        let layers = if self.shared {
            "disk layers on shared storage"
        } else {
            "the disk layers"
        };
        match part {
            SnapshotSetPart::Disk => format!("copying {layers} of {snapshots} snapshots {route}"),
            SnapshotSetPart::Memory => format!(
                "copying {snapshots} snapshots {route} in the background: {missing} of {chunks} memory chunks"
            ),
            SnapshotSetPart::All => format!(
                "copying {snapshots} snapshots {route}: {missing} of {chunks} memory chunks, {layers}"
            ),
        }
    }
}

/// Runs `transfer` (the memory transfer, followed to its end) and `first` (the copy of the
/// memory part of the snapshot set, started before) side by side, and answers both
/// outputs: the migration goes on to its verification and commit only when both succeeded.
/// A copy that fails while the memory still moves has the migration cancelled (`cancel`),
/// and the step fails with the copy's error once the transfer ended (its undo resumes the
/// VM at its source, with all its snapshots). A copy that fails after a switch-over on
/// shared storage, which cannot be undone, is tried again (`copy`: it sends only what is
/// still missing); if it still fails, its error is the copy's output, and the commit tries
/// once more before it moves anything (see [`ensure_copied`]): the source keeps its copy
/// until the commit, so nothing is lost.
pub(super) async fn beside_transfer<T, FF, C, F, K, KF>(
    transfer: T,
    first: FF,
    copy: C,
    cancel: K,
) -> Result<(Value, Value), StepError>
where
    T: std::future::Future<Output = Result<Value, StepError>>,
    FF: std::future::Future<Output = Result<Value, StepError>>,
    C: Fn() -> F,
    F: std::future::Future<Output = Result<Value, StepError>>,
    K: FnOnce() -> KF,
    KF: std::future::Future<Output = ()>,
{
    tokio::pin!(transfer, first);
    let (moved, mut copied) = tokio::select! {
        moved = &mut transfer => (moved?, first.await),
        copied = &mut first => match copied {
            Ok(copied) => return Ok((transfer.await?, copied)),
            Err(e) => {
                tracing::warn!(error = %e, "the snapshot copy failed: cancelling the migration");
                cancel().await;
                match transfer.await {
                    // Too late to cancel: the switch-over was done on shared storage.
                    Ok(moved) if switched_over_on_shared(&moved) => (moved, Err(e)),
                    _ => return Err(e),
                }
            }
        }
    };
    if !switched_over_on_shared(&moved) {
        return Ok((moved, copied?));
    }
    for attempt in 1..COPY_ATTEMPTS_AFTER_SWITCH_OVER {
        let Err(e) = &copied else { break };
        tracing::warn!(error = %e, attempt, "the snapshot copy failed after the switch-over; trying again");
        copied = copy().await;
    }
    let copied = copied.unwrap_or_else(|e| json!({ "error": e.to_string() }));
    Ok((moved, copied))
}

/// Attempts of a snapshot copy that failed after a switch-over that cannot be undone.
const COPY_ATTEMPTS_AFTER_SWITCH_OVER: u32 = 3;

/// Whether a transfer's output is a switch-over done on shared storage (the point of no
/// return: the target may have written to the disk already).
pub(super) fn switched_over_on_shared(output: &Value) -> bool {
    output.get("shared").and_then(Value::as_bool) == Some(true)
}

/// Copies `set`'s memory part again when the copy beside the transfer recorded an error
/// (`copied`, see [`beside_transfer`]): a commit moves the snapshots only once they are all
/// on the target.
pub(super) async fn ensure_copied(
    set: &SnapshotMove,
    copied: Option<&Value>,
    app: &App,
    s: &StepContext<'_>,
) -> Result<(), StepError> {
    let Some(error) = copied.and_then(|v| v.get("error")) else {
        return Ok(());
    };
    tracing::warn!(instance_id = %set.instance, %error, "the snapshot copy failed beside the transfer; trying once more before the commit");
    set.copy(app, Some(s), SnapshotSetPart::Memory)
        .await
        .map(drop)
}

/// No byte from the source for this long: the copy has stalled (a cut link, a stuck host)
/// and is given up, so the migration unwinds instead of waiting for the transfer timeout.
pub const STALL_BOUND: std::time::Duration = std::time::Duration::from_secs(10);

/// `bytes`, ending with an error when no piece arrives within `bound`.
pub fn stall_bounded<S, E>(
    bytes: S,
    bound: std::time::Duration,
) -> impl futures::Stream<Item = Result<bytes::Bytes, std::io::Error>>
where
    S: futures::Stream<Item = Result<bytes::Bytes, E>> + Send + Unpin + 'static,
    E: std::error::Error + Send + Sync + 'static,
{
    futures::stream::unfold(Some(bytes), move |state| async move {
        let mut bytes = state?;
        match tokio::time::timeout(bound, futures::StreamExt::next(&mut bytes)).await {
            Ok(Some(Ok(piece))) => Some((Ok(piece), Some(bytes))),
            Ok(Some(Err(e))) => Some((Err(std::io::Error::other(e)), None)),
            Ok(None) => None,
            Err(_) => Some((
                Err(std::io::Error::other(format!(
                    "the snapshot copy stalled: no data from the source for {} ms",
                    bound.as_millis()
                ))),
                None,
            )),
        }
    })
}

/// Bytes a recorded copy sent (0 for none).
pub(super) fn copied_bytes(v: Option<&Value>) -> u64 {
    let get = |k: &str| {
        v.and_then(|v| v.get(k))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    get("layer_bytes") + get("chunk_bytes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn failing_copies(
        fails: u32,
        calls: &AtomicU32,
    ) -> impl Fn() -> futures::future::Ready<Result<Value, StepError>> + '_ {
        move || {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            futures::future::ready(if n < fails {
                Err(StepError::permanent("copy broke"))
            } else {
                Ok(json!({ "chunks_sent": 3 }))
            })
        }
    }

    /// A transfer that ends cancelled once `cancelled` is notified, or with `ends` at once.
    async fn transfer(
        ends: Option<Value>,
        cancelled: &tokio::sync::Notify,
    ) -> Result<Value, StepError> {
        match ends {
            Some(v) => Ok(v),
            None => {
                cancelled.notified().await;
                Err(StepError::Cancelled)
            }
        }
    }

    #[tokio::test]
    async fn a_copy_that_fails_while_the_memory_moves_cancels_the_migration() {
        let (calls, cancelled) = (AtomicU32::new(0), tokio::sync::Notify::new());
        let cancel = || async { cancelled.notify_one() };
        let copies = failing_copies(1, &calls);
        let got = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            beside_transfer(transfer(None, &cancelled), copies(), &copies, cancel),
        )
        .await
        .expect("the transfer was cancelled");
        let err = got.expect_err("failed");
        assert!(
            err.to_string().contains("copy broke"),
            "the copy's error: {err}"
        );
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "an undoable move is not retried"
        );
    }

    #[tokio::test]
    async fn both_must_succeed_and_only_a_switch_over_on_shared_storage_retries() {
        let cancelled = tokio::sync::Notify::new();
        let run = |ends: Value, fails: u32| {
            let cancelled = &cancelled;
            async move {
                let calls = AtomicU32::new(0);
                let copies = failing_copies(fails, &calls);
                let got = beside_transfer(
                    transfer(Some(ends), cancelled),
                    copies(),
                    &copies,
                    || async {},
                )
                .await;
                (got, calls.load(Ordering::SeqCst))
            }
        };
        let (local, shared) = (json!({ "shared": false }), json!({ "shared": true }));
        let (got, _) = run(local.clone(), 0).await;
        let (moved, copied) = got.expect("both done");
        assert_eq!(
            (moved, copied["chunks_sent"].clone()),
            (local.clone(), json!(3))
        );
        assert!(
            run(local, 1).await.0.is_err(),
            "undoable: the copy's failure fails it"
        );

        let (got, _) = run(shared.clone(), 2).await;
        assert_eq!(got.expect("retried").1["chunks_sent"], json!(3));
        let (got, calls) = run(shared, 99).await;
        let copied = got.expect("the switch-over stands").1;
        assert!(
            copied["error"]
                .as_str()
                .is_some_and(|e| e.contains("copy broke")),
            "{copied}"
        );
        assert_eq!(calls, COPY_ATTEMPTS_AFTER_SWITCH_OVER);

        let failed = async { Err(StepError::permanent("migration failed")) };
        let calls = AtomicU32::new(0);
        let copies = failing_copies(0, &calls);
        let got = beside_transfer(failed, copies(), &copies, || async {}).await;
        assert!(got.is_err());
    }

    #[tokio::test]
    async fn a_stalled_copy_ends_with_an_error() {
        let pieces: Vec<Result<bytes::Bytes, std::io::Error>> =
            vec![Ok(bytes::Bytes::from_static(b"abc"))];
        let source = futures::stream::iter(pieces).chain(futures::stream::pending());
        let bounded = stall_bounded(Box::pin(source), std::time::Duration::from_millis(50));
        let got: Vec<_> = bounded.collect().await;
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].as_ref().expect("first piece").as_ref(), b"abc");
        let err = got[1].as_ref().expect_err("stalled");
        assert!(err.to_string().contains("stalled"), "{err}");
    }
}
