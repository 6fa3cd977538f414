//! Snapshots move with their instance (issue 14, part 1): before the target defines the
//! instance (live or cold), the source's snapshot set (frozen disk layers, manifests, the
//! memory chunks the target lacks) is relayed to the target, which checks every digest and
//! stages it; the arriving instance then takes it (see `nimbus_agent_api::snapshot_move`).
//!
//! Why through the controller: both agents already trust it over their authenticated agent
//! API (moving to mutual TLS), as for a cold migration's disk; no new socket, no trust
//! between agents. The copy runs while the VM still runs on the source (before the memory
//! transfer starts), so the guest's downtime does not change; only what the target does not
//! hold is sent (chunks by digest), and with shared storage the layers are not sent at all.
//! Nothing is deleted on the source before the commit: its copy goes with the source VM in
//! `cleanup_source`; a failed move deletes the target's copy with the target VM.

use super::steps::{agent_err, app_err};
use crate::app::App;
use nimbus_agent_api::{ExportSnapshotSet, MissingChunks};
use nimbus_ops::{StepContext, StepError};
use serde_json::{json, Value};
use uuid::Uuid;

/// How the snapshot set of one move goes.
pub(super) struct SnapshotMove<'a> {
    pub instance: Uuid,
    pub source: &'a str,
    pub target: &'a str,
    /// Both hosts see the disk layers on shared storage: they are not copied.
    pub shared: bool,
    /// A live migration: the top layer (the guest writes it) moves by the disk mirror.
    pub live: bool,
}

impl SnapshotMove<'_> {
    /// Copies the set; `Value::Null` when the instance has no snapshots (nor layers).
    pub async fn copy(&self, app: &App, s: &StepContext<'_>) -> Result<Value, StepError> {
        let source = app.agent_of(self.source).await.map_err(app_err)?;
        let target = app.agent_of(self.target).await.map_err(app_err)?;
        let inventory = source
            .snapshot_set(self.instance)
            .await
            .map_err(agent_err)?;
        if inventory.is_empty() {
            return Ok(Value::Null);
        }
        let missing = target
            .missing_chunks(&MissingChunks {
                chunks: inventory.chunks.clone(),
            })
            .await
            .map_err(agent_err)?;
        s.progress(&format!(
            "copying {} snapshots from {} to {}: {} of {} memory chunks{}",
            inventory.snapshots,
            self.source,
            self.target,
            missing.chunks.len(),
            inventory.chunks.len(),
            if self.shared {
                ", disk layers on shared storage"
            } else {
                " and the disk layers"
            }
        ))
        .await;
        let req = ExportSnapshotSet {
            chunks: missing.chunks,
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
            .import_snapshot_set(self.instance, body)
            .await
            .map_err(agent_err)?;
        tracing::info!(instance_id = %self.instance, source = self.source, target = self.target, ?got, "snapshot set copied");
        Ok(json!({
            "snapshots": got.snapshots,
            "layers": got.layers,
            "layer_bytes": got.layer_bytes,
            "chunks_sent": got.chunks,
            "chunks_skipped": inventory.chunks.len() as u64 - got.chunks,
            "chunk_bytes": got.chunk_bytes,
        }))
    }
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
