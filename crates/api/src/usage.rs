//! Measured service: what instances used over a period (`GET /v1/usage`).
//!
//! Agents sample every running VM (see docs/metering.md); usage between two samples is
//! spread evenly over that interval, and intervals are clipped to the period asked for.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

/// Which usage to report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, IntoParams)]
pub struct UsageQuery {
    /// Only this project [default: every project the caller may see].
    pub project: Option<String>,
    /// Start of the period, inclusive (RFC 3339) [default: 24 hours before `to`].
    pub from: Option<DateTime<Utc>>,
    /// End of the period, exclusive (RFC 3339) [default: now].
    pub to: Option<DateTime<Utc>>,
}

/// Amounts used over a period.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UsageAmounts {
    /// vCPUs allocated x seconds running.
    pub vcpu_seconds_allocated: f64,
    /// CPU time the VM's QEMU process used, in seconds.
    pub cpu_seconds_used: f64,
    /// Memory allocated (MiB) x seconds running.
    pub memory_mib_seconds: f64,
    /// Allocated size of the instance disk (GiB) x hours, running or stopped.
    pub disk_gib_hours: f64,
    /// Storage held by the instance's snapshots (GiB) x hours.
    pub snapshot_gib_hours: f64,
    /// Bytes the guest received.
    pub net_rx_bytes: u64,
    /// Bytes the guest sent.
    pub net_tx_bytes: u64,
}

/// One instance's usage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct InstanceUsage {
    pub instance_id: Uuid,
    /// The instance's name (as last measured; it may be deleted since).
    pub instance: String,
    pub project: String,
    /// Seconds the instance ran in the period (on any host).
    pub running_seconds: f64,
    pub usage: UsageAmounts,
}

/// Usage over a period: per instance and in total.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UsageReport {
    pub project: Option<String>,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub instances: Vec<InstanceUsage>,
    pub total: UsageAmounts,
}
