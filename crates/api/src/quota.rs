//! Quotas: per-project limits, enforced when resources are created.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Limits of a project; `null` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct QuotaLimits {
    pub instances: Option<u64>,
    pub vcpus: Option<u64>,
    pub memory_mib: Option<u64>,
    pub disk_gib: Option<u64>,
    pub snapshots: Option<u64>,
    /// MiB of images the project owns (uploaded or baked).
    #[serde(default)]
    pub image_mib: Option<u64>,
    /// Floating IPs the project holds (attached or not).
    #[serde(default)]
    pub floating_ips: Option<u64>,
}

impl QuotaLimits {
    /// No limit on anything (the `default` project unless an admin sets one).
    pub const UNLIMITED: QuotaLimits = QuotaLimits {
        instances: None,
        vcpus: None,
        memory_mib: None,
        disk_gib: None,
        snapshots: None,
        image_mib: None,
        floating_ips: None,
    };

    /// What a new project gets: room for a handful of small machines.
    pub const NEW_PROJECT: QuotaLimits = QuotaLimits {
        instances: Some(10),
        vcpus: Some(20),
        memory_mib: Some(20 * 1024),
        disk_gib: Some(200),
        snapshots: Some(20),
        image_mib: Some(20 * 1024),
        floating_ips: Some(2),
    };
}

/// What a project holds now, counted the way quotas count it (every instance row, whatever
/// its state, until its delete finishes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct QuotaUsage {
    pub instances: u64,
    pub vcpus: u64,
    pub memory_mib: u64,
    pub disk_gib: u64,
    pub snapshots: u64,
    /// MiB of images the project owns, rounded up.
    #[serde(default)]
    pub image_mib: u64,
    /// Floating IPs the project holds.
    #[serde(default)]
    pub floating_ips: u64,
}

/// Answer of `GET /v1/projects/{project}/quota`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct QuotaView {
    pub project: String,
    pub limits: QuotaLimits,
    pub usage: QuotaUsage,
}
