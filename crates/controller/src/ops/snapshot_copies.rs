//! Memory parts of live moves copying in the background, by operation (see
//! [`super::snapshot_move`]): the prepare step starts one beside the disk layers and the
//! target's start, the transfer step awaits it beside the memory transfer, an undo ends it
//! before the target's copy is removed.
//!
//! Held in this controller's memory only: after a restart or a takeover of the operation,
//! the transfer step finds none here and copies again (only what the target still lacks;
//! the target's receive of the first attempt broke off with its connection and dropped
//! what it staged).

use nimbus_ops::StepError;
use serde_json::Value;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use tokio::task::{JoinError, JoinHandle};
use uuid::Uuid;

/// A copy's task, ended when its handle is dropped: a step that gave up on it (failed,
/// cancelled, or its future dropped) leaves nothing running.
pub struct Running(JoinHandle<Result<Value, StepError>>);

impl Running {
    /// Whether the copy has ended (its result is ready).
    pub fn is_finished(&self) -> bool {
        self.0.is_finished()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Future for Running {
    type Output = Result<Result<Value, StepError>, JoinError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

/// The copies running in this controller.
#[derive(Default)]
pub struct SnapshotCopies {
    running: Mutex<HashMap<Uuid, Running>>,
}

impl SnapshotCopies {
    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts `copy` for operation `op`; one it had already (an action run again) is ended.
    pub fn start<F>(&self, op: Uuid, copy: F)
    where
        F: Future<Output = Result<Value, StepError>> + Send + 'static,
    {
        let handle = Running(tokio::spawn(copy));
        // One there already is ended as it is dropped.
        drop(self.running().insert(op, handle));
    }

    /// The copy of `op`, taken out (the caller awaits it with [`joined`]); `None` when none
    /// runs here.
    pub fn take(&self, op: Uuid) -> Option<Running> {
        self.running().remove(&op)
    }

    /// Ends the copy of `op`, if one runs, and waits until it has.
    pub async fn end(&self, op: Uuid) {
        if let Some(copy) = self.take(op) {
            copy.0.abort();
            let _ = copy.await;
        }
    }
}

/// What a copy that ran as a task answered.
pub async fn joined(copy: Running) -> Result<Value, StepError> {
    copy.await.unwrap_or_else(|e| {
        Err(StepError::permanent(format!(
            "the snapshot copy ended early: {e}"
        )))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn a_copy_is_taken_once_and_an_ended_one_does_not_linger() {
        let copies = SnapshotCopies::default();
        let op = Uuid::new_v4();
        copies.start(op, async { Ok(json!({ "chunks_sent": 3 })) });
        let copy = copies.take(op).expect("running");
        assert_eq!(joined(copy).await.expect("done")["chunks_sent"], 3);
        assert!(copies.take(op).is_none(), "taken once");

        // Started again (an action run twice): the first is ended; an undo ends the second.
        let (mut tx, rx) = tokio::sync::oneshot::channel::<()>();
        copies.start(op, async move {
            let _ = rx.await;
            Ok(json!({}))
        });
        copies.start(op, std::future::pending());
        tokio::time::timeout(std::time::Duration::from_secs(5), tx.closed())
            .await
            .expect("the first copy was ended");
        tokio::time::timeout(std::time::Duration::from_secs(5), copies.end(op))
            .await
            .expect("ended at once");
        assert!(copies.take(op).is_none());
    }
}
