//! Operations: durable multi-step actions (create, start, stop, reboot, delete, ...).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// What an operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OperationKind {
    InstanceCreate,
    InstanceStart,
    InstanceStop,
    InstanceReboot,
    InstanceDelete,
    InstanceMigrate,
    /// Moves a stopped instance to another host (its disk copied, or relinked on shared
    /// storage); it stays stopped.
    InstanceColdMigrate,
    HostDrain,
    /// A new instance resumed from another instance's snapshot.
    InstanceClone,
    SnapshotCreate,
    SnapshotRestore,
    SnapshotDelete,
    /// Deletes a scaling group: its members through their delete operations, then the group.
    GroupDelete,
    /// Restarts an HA instance of a down host on another host (from shared storage).
    InstanceHaRestart,
}

impl OperationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OperationKind::InstanceCreate => "instance_create",
            OperationKind::InstanceStart => "instance_start",
            OperationKind::InstanceStop => "instance_stop",
            OperationKind::InstanceReboot => "instance_reboot",
            OperationKind::InstanceDelete => "instance_delete",
            OperationKind::InstanceMigrate => "instance_migrate",
            OperationKind::InstanceColdMigrate => "instance_cold_migrate",
            OperationKind::HostDrain => "host_drain",
            OperationKind::InstanceClone => "instance_clone",
            OperationKind::SnapshotCreate => "snapshot_create",
            OperationKind::SnapshotRestore => "snapshot_restore",
            OperationKind::SnapshotDelete => "snapshot_delete",
            OperationKind::GroupDelete => "group_delete",
            OperationKind::InstanceHaRestart => "instance_ha_restart",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "instance_create" => OperationKind::InstanceCreate,
            "instance_start" => OperationKind::InstanceStart,
            "instance_stop" => OperationKind::InstanceStop,
            "instance_reboot" => OperationKind::InstanceReboot,
            "instance_delete" => OperationKind::InstanceDelete,
            "instance_migrate" => OperationKind::InstanceMigrate,
            "instance_cold_migrate" => OperationKind::InstanceColdMigrate,
            "host_drain" => OperationKind::HostDrain,
            "instance_clone" => OperationKind::InstanceClone,
            "snapshot_create" => OperationKind::SnapshotCreate,
            "snapshot_restore" => OperationKind::SnapshotRestore,
            "snapshot_delete" => OperationKind::SnapshotDelete,
            "group_delete" => OperationKind::GroupDelete,
            "instance_ha_restart" => OperationKind::InstanceHaRestart,
            _ => return None,
        })
    }
}

/// Where an operation is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OperationState {
    /// Running its steps forward.
    Running,
    /// Undoing the steps it did, after a failure or a cancel.
    Unwinding,
    Succeeded,
    Failed,
    Cancelled,
}

impl OperationState {
    pub fn as_str(self) -> &'static str {
        match self {
            OperationState::Running => "running",
            OperationState::Unwinding => "unwinding",
            OperationState::Succeeded => "succeeded",
            OperationState::Failed => "failed",
            OperationState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "running" => OperationState::Running,
            "unwinding" => OperationState::Unwinding,
            "succeeded" => OperationState::Succeeded,
            "failed" => OperationState::Failed,
            "cancelled" => OperationState::Cancelled,
            _ => return None,
        })
    }

    /// The operation will not change any more.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            OperationState::Succeeded | OperationState::Failed | OperationState::Cancelled
        )
    }
}

/// State of one step of an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    Pending,
    Running,
    Done,
    Failed,
    Undone,
}

impl StepState {
    pub fn as_str(self) -> &'static str {
        match self {
            StepState::Pending => "pending",
            StepState::Running => "running",
            StepState::Done => "done",
            StepState::Failed => "failed",
            StepState::Undone => "undone",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => StepState::Pending,
            "running" => StepState::Running,
            "done" => StepState::Done,
            "failed" => StepState::Failed,
            "undone" => StepState::Undone,
            _ => return None,
        })
    }
}

/// One step of an operation, as recorded in its step log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StepView {
    pub name: String,
    pub state: StepState,
    /// What the step reported (e.g. the chosen host), free-form JSON.
    #[schema(value_type = Object)]
    pub output: Option<serde_json::Value>,
    pub error: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// Longest wait `GET /v1/operations/{operation}?wait_secs=` accepts.
pub const MAX_OPERATION_WAIT_SECS: u32 = 60;

/// Query parameters of `GET /v1/operations/{operation}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OperationWaitParams {
    /// Waits up to this many seconds (at most 60) for the operation to change (its state,
    /// a step, its progress line) before answering, so that a client waiting for it learns
    /// of its end at once instead of at its next poll. An operation that has ended is
    /// answered at once. Absent or 0: no wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_secs: Option<u32>,
}

/// An operation as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OperationView {
    pub id: Uuid,
    pub kind: OperationKind,
    pub state: OperationState,
    /// Id of the resource the operation acts on.
    pub target_id: Uuid,
    /// Name of that resource when the operation began.
    pub target_name: String,
    pub project: String,
    /// Latest progress line, e.g. "waiting for the guest to boot".
    pub message: Option<String>,
    pub steps_done: u32,
    pub steps_total: u32,
    /// Why it failed.
    pub error: Option<String>,
    /// The user asked to cancel it.
    pub cancel_requested: bool,
    pub steps: Vec<StepView>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}
