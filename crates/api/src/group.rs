//! Scaling groups: identical instances kept at a desired size, grown and shrunk by a policy
//! on their CPU use, with failed members replaced. See docs/scaling.md.

use crate::InstanceState;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// How a group decides its desired size from its members' average CPU use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PolicyKind {
    /// Keep the average CPU use near `target_cpu`: desired = ceil(current x avg / target),
    /// with a dead band of 10% of the target around it so the group does not flap.
    #[default]
    TargetTracking,
    /// Add or remove a fixed number of instances when the average crosses thresholds
    /// (`steps`).
    Step,
}

impl PolicyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyKind::TargetTracking => "target_tracking",
            PolicyKind::Step => "step",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "target_tracking" => Some(PolicyKind::TargetTracking),
            "step" => Some(PolicyKind::Step),
            _ => None,
        }
    }
}

/// Which side of its threshold a step acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepBound {
    /// The step applies when the average CPU use is above `cpu`.
    Above,
    /// The step applies when the average CPU use is below `cpu`.
    Below,
}

/// One step of a step policy, e.g. "above 80%: +2" or "below 20%: -1".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ScalingStep {
    pub bound: StepBound,
    /// Threshold, in percent of the members' vCPUs.
    pub cpu: u32,
    /// Instances to add (positive) or remove (negative).
    pub change: i32,
}

/// Body of `POST /v1/groups`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CreateGroup {
    /// Group name; members are named `<name>-<short id>`.
    pub name: String,
    pub flavor: String,
    pub image: String,
    /// Fewest instances the group keeps.
    pub min: u32,
    /// Most instances the group may have.
    pub max: u32,
    /// Instances wanted now (default: `min`).
    #[serde(default)]
    pub desired: Option<u32>,
    /// Average CPU use to keep, in percent of the members' vCPUs (1-100).
    pub target_cpu: u32,
    #[serde(default)]
    pub policy: PolicyKind,
    /// Steps of a `step` policy (ignored by target tracking).
    #[serde(default)]
    pub steps: Vec<ScalingStep>,
    /// Length of the moving average of CPU use, in seconds (default 60).
    #[serde(default)]
    pub window_secs: Option<u32>,
    /// Time after a scaling change during which the policy makes no other, in seconds
    /// (default 60).
    #[serde(default)]
    pub cooldown_secs: Option<u32>,
}

/// Body of `PATCH /v1/groups/{group}`: the fields to change; a change applies at once.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UpdateGroup {
    #[serde(default)]
    pub desired: Option<u32>,
    #[serde(default)]
    pub min: Option<u32>,
    #[serde(default)]
    pub max: Option<u32>,
    #[serde(default)]
    pub target_cpu: Option<u32>,
    #[serde(default)]
    pub window_secs: Option<u32>,
    #[serde(default)]
    pub cooldown_secs: Option<u32>,
}

/// One member of a group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GroupMember {
    pub name: String,
    pub state: InstanceState,
    pub host: Option<String>,
    /// Average CPU use over the group's window, in percent of its vCPUs (`None` until the
    /// window has been observed).
    pub cpu_percent: Option<f64>,
    pub created_at: DateTime<Utc>,
}

/// Something that happened to a group: a scaling decision (with its reason), a replacement,
/// a refused scale-out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GroupEvent {
    pub at: DateTime<Utc>,
    /// `created`, `scale_out`, `scale_in`, `set`, `replace`, `refused`, `deleting`.
    pub kind: String,
    /// e.g. "avg CPU 91% over 60 s > 60% target: +2".
    pub message: String,
    /// Change of the desired size the event made (0 if none).
    pub delta: i32,
}

/// A scaling group as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GroupView {
    pub name: String,
    pub project: String,
    pub flavor: String,
    pub image: String,
    pub min: u32,
    pub max: u32,
    /// How many instances the group should have.
    pub desired: u32,
    /// How many it has (members not being deleted, including those still being built).
    pub current: u32,
    pub target_cpu: u32,
    pub policy: PolicyKind,
    pub steps: Vec<ScalingStep>,
    pub window_secs: u32,
    pub cooldown_secs: u32,
    /// `active`, or `deleting` while its delete operation runs.
    pub state: String,
    /// Average CPU use of the members over the window, when every running member has one.
    pub cpu_percent: Option<f64>,
    pub instances: Vec<GroupMember>,
    /// Most recent events first.
    pub events: Vec<GroupEvent>,
    /// Members replaced because they failed (error, crash or silent heartbeat).
    pub replacements: u64,
    pub last_scaled_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}
