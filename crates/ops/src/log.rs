//! The persisted step log an operation runs against.

use async_trait::async_trait;
use nimbus_api::{OperationState, StepState};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Mutex;
use uuid::Uuid;

/// The log could not be read or written.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LogError {
    #[error("operation log: {0}")]
    Failed(String),
    /// Another runner took the operation over (this one's lease expired): this runner must
    /// stop at once, without undoing anything (the new owner carries on from the log).
    #[error(
        "the operation's lease was lost (epoch {epoch} is stale): another controller runs it now"
    )]
    LeaseLost { epoch: u64 },
}

/// One step as recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct StepRecord {
    pub name: String,
    pub state: StepState,
    pub output: Option<Value>,
    pub error: Option<String>,
}

/// An operation as recorded: its state and its steps in order.
#[derive(Debug, Clone, PartialEq)]
pub struct LogSnapshot {
    pub state: OperationState,
    pub steps: Vec<StepRecord>,
    pub error: Option<String>,
}

/// Where the engine records every transition. The controller implements it on its database;
/// [`MemoryLog`] implements it in memory for tests.
#[async_trait]
pub trait OperationLog: Send + Sync {
    /// Reads the operation. Steps not yet recorded are absent or `pending`.
    async fn load(&self, op: Uuid) -> Result<LogSnapshot, LogError>;
    /// Records the step names, all pending (idempotent: does nothing if already recorded).
    async fn init_steps(&self, op: Uuid, names: &[&str]) -> Result<(), LogError>;
    async fn set_step(
        &self,
        op: Uuid,
        index: usize,
        state: StepState,
        output: Option<&Value>,
        error: Option<&str>,
    ) -> Result<(), LogError>;
    async fn set_state(
        &self,
        op: Uuid,
        state: OperationState,
        error: Option<&str>,
    ) -> Result<(), LogError>;
    async fn set_message(&self, op: Uuid, message: &str) -> Result<(), LogError>;
    async fn cancel_requested(&self, op: Uuid) -> Result<bool, LogError>;
    /// The epoch of this runner's ownership, when the log is fenced by one (it travels with
    /// commands to agents that can refuse a stale owner).
    fn epoch(&self) -> Option<u64> {
        None
    }
}

/// In-memory [`OperationLog`], for tests of operations and of the engine.
#[derive(Default)]
pub struct MemoryLog {
    ops: Mutex<HashMap<Uuid, MemoryEntry>>,
}

/// One operation in a [`MemoryLog`].
struct MemoryEntry {
    snap: LogSnapshot,
    cancel: bool,
    messages: Vec<String>,
}

impl MemoryLog {
    /// Registers a new operation in state `running`.
    pub fn create(&self, op: Uuid) {
        let snap = LogSnapshot {
            state: OperationState::Running,
            steps: Vec::new(),
            error: None,
        };
        self.lock().insert(
            op,
            MemoryEntry {
                snap,
                cancel: false,
                messages: Vec::new(),
            },
        );
    }

    /// Asks for a cancel, as a user would.
    pub fn request_cancel(&self, op: Uuid) {
        if let Some(entry) = self.lock().get_mut(&op) {
            entry.cancel = true;
        }
    }

    /// Progress messages recorded so far.
    pub fn messages(&self, op: Uuid) -> Vec<String> {
        self.lock()
            .get(&op)
            .map(|e| e.messages.clone())
            .unwrap_or_default()
    }

    /// Overwrites the snapshot, e.g. to simulate a crash at a chosen point.
    pub fn set_snapshot(&self, op: Uuid, snap: LogSnapshot) {
        if let Some(entry) = self.lock().get_mut(&op) {
            entry.snap = snap;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, MemoryEntry>> {
        self.ops.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn with<T>(&self, op: Uuid, f: impl FnOnce(&mut MemoryEntry) -> T) -> Result<T, LogError> {
        self.lock()
            .get_mut(&op)
            .map(f)
            .ok_or_else(|| LogError::Failed(format!("no operation {op}")))
    }
}

#[async_trait]
impl OperationLog for MemoryLog {
    async fn load(&self, op: Uuid) -> Result<LogSnapshot, LogError> {
        self.with(op, |e| e.snap.clone())
    }

    async fn init_steps(&self, op: Uuid, names: &[&str]) -> Result<(), LogError> {
        self.with(op, |e| {
            if e.snap.steps.is_empty() {
                e.snap.steps = names
                    .iter()
                    .map(|n| StepRecord {
                        name: n.to_string(),
                        state: StepState::Pending,
                        output: None,
                        error: None,
                    })
                    .collect();
            }
        })
    }

    async fn set_step(
        &self,
        op: Uuid,
        index: usize,
        state: StepState,
        output: Option<&Value>,
        error: Option<&str>,
    ) -> Result<(), LogError> {
        self.with(op, |e| {
            if let Some(step) = e.snap.steps.get_mut(index) {
                step.state = state;
                if output.is_some() {
                    step.output = output.cloned();
                }
                step.error = error.map(str::to_string);
            }
        })
    }

    async fn set_state(
        &self,
        op: Uuid,
        state: OperationState,
        error: Option<&str>,
    ) -> Result<(), LogError> {
        self.with(op, |e| {
            e.snap.state = state;
            if error.is_some() {
                e.snap.error = error.map(str::to_string);
            }
        })
    }

    async fn set_message(&self, op: Uuid, message: &str) -> Result<(), LogError> {
        self.with(op, |e| e.messages.push(message.to_string()))
    }

    async fn cancel_requested(&self, op: Uuid) -> Result<bool, LogError> {
        self.with(op, |e| e.cancel)
    }
}
