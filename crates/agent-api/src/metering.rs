//! Usage samples: what an agent measured of one *meter* (one QEMU incarnation of a VM on
//! this host), pushed to the controller (`POST /v1/internal/usage/samples`).
//!
//! An `instance` meter opens when a VM starts running on a host (a launch, or the resume of
//! a migrated guest on its target) and closes when it stops running there (exit, delete, or
//! pause at the switch-over of a migration away). A `disk` meter measures the instance disk
//! while the VM is defined on the host, running or not (from its definition, or the resume
//! of a migrated guest, until its delete or the switch-over away). Every counter of a sample is *cumulative since the
//! meter opened*, so a lost sample loses nothing (the next one carries it) and the
//! controller derives each interval from two consecutive samples of the same meter.
//! `(meter_id, seq)` identifies a sample: a resent sample is stored once.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What a meter measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MeterKind {
    /// A running VM: vCPU and memory allocation, CPU used, network.
    Instance,
    /// The instance disk on its host, running or not (only `storage_bytes` is meaningful).
    Disk,
    /// Storage held by a snapshot (only `storage_bytes` is meaningful).
    Snapshot,
}

impl MeterKind {
    /// The kind as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            MeterKind::Instance => "instance",
            MeterKind::Disk => "disk",
            MeterKind::Snapshot => "snapshot",
        }
    }

    /// Parses a stored kind.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "instance" => Some(MeterKind::Instance),
            "disk" => Some(MeterKind::Disk),
            "snapshot" => Some(MeterKind::Snapshot),
            _ => None,
        }
    }
}

/// One sample of a meter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageSample {
    /// The meter (random, one per VM incarnation on a host).
    pub meter_id: Uuid,
    /// 0, 1, 2, ... within the meter; continues across agent restarts.
    pub seq: u64,
    pub kind: MeterKind,
    /// The instance measured (for a snapshot meter: the snapshot's instance).
    pub instance_id: Uuid,
    /// Unix time (ms) the meter opened: the start of its first interval.
    pub started_unix_ms: u64,
    /// Unix time (ms) of this sample (for the closing sample: when the VM stopped running).
    pub sampled_unix_ms: u64,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// Milliseconds the VM ran since the meter opened (cumulative).
    pub running_ms: u64,
    /// CPU time QEMU used since the meter opened, in nanoseconds (cumulative).
    pub cpu_ns: u64,
    /// Bytes the guest received since the meter opened (cumulative; the tap's tx).
    pub net_rx_bytes: u64,
    /// Bytes the guest sent since the meter opened (cumulative; the tap's rx).
    pub net_tx_bytes: u64,
    /// Resident memory of QEMU now (gauge).
    pub rss_bytes: u64,
    /// Bytes of storage allocated now (gauge): the instance's disk overlay, or the snapshot.
    pub storage_bytes: u64,
    /// Storage held since the meter opened, in KiB x seconds (cumulative: the integral of
    /// the allocated size over time, kept by the agent between samples).
    #[serde(default)]
    pub storage_kib_seconds: u64,
    /// The meter's last sample.
    pub last: bool,
}

impl UsageSample {
    /// The sample's identity.
    pub fn key(&self) -> (Uuid, u64) {
        (self.meter_id, self.seq)
    }
}

/// A batch of samples from one host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageBatch {
    /// The host that measured.
    pub host: String,
    pub samples: Vec<UsageSample>,
}

/// The controller's answer: how many samples were new (the rest were already stored).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageAck {
    pub stored: u64,
    pub duplicates: u64,
}
