//! Instances: the tenants' virtual machines.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// Lifecycle state of an instance.
///
/// ```text
///  create ─▶ building ─▶ running ◀──────────── starting ◀─┐
///                 │        │  │ reboot ▶ rebooting ─▶ running
///                 │        │  ├─ stop ▶ stopping ─▶ stopped ─┘ start
///                 │        │  └─ migrate ▶ migrating ─▶ running (on another host)
///                 ▼        ▼
///               error    (QEMU died) error     delete (any state) ▶ deleting ▶ gone
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum InstanceState {
    Building,
    Starting,
    Running,
    Stopping,
    Stopped,
    Rebooting,
    /// Moving to another host while it runs (live migration).
    Migrating,
    Deleting,
    Error,
}

impl InstanceState {
    /// The state as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Building => "building",
            InstanceState::Starting => "starting",
            InstanceState::Running => "running",
            InstanceState::Stopping => "stopping",
            InstanceState::Stopped => "stopped",
            InstanceState::Rebooting => "rebooting",
            InstanceState::Migrating => "migrating",
            InstanceState::Deleting => "deleting",
            InstanceState::Error => "error",
        }
    }

    /// Parses a stored state.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "building" => InstanceState::Building,
            "starting" => InstanceState::Starting,
            "running" => InstanceState::Running,
            "stopping" => InstanceState::Stopping,
            "stopped" => InstanceState::Stopped,
            "rebooting" => InstanceState::Rebooting,
            "migrating" => InstanceState::Migrating,
            "deleting" => InstanceState::Deleting,
            "error" => InstanceState::Error,
            _ => return None,
        })
    }
}

impl std::fmt::Display for InstanceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An instance as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct InstanceView {
    pub id: Uuid,
    pub name: String,
    pub state: InstanceState,
    /// The host it runs on; none before placement.
    pub host: Option<String>,
    pub flavor: String,
    pub image: String,
    pub project: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub disk_gib: u64,
    /// Why the instance is in `error`.
    pub reason: Option<String>,
    /// The guest is up since its last boot, and what said so; `None`: not (yet), or not
    /// known (stopped, or its host has not reported since it booted).
    #[serde(default)]
    pub ready: Option<ReadySource>,
    /// Address on the cloud network (kept across migrations).
    pub ip: Option<String>,
    /// MAC address of its NIC (kept across migrations).
    pub mac: Option<String>,
    /// Its NICs, one per network, in the order asked for (the first is `ip`/`mac`).
    #[serde(default)]
    pub nics: Vec<crate::NicView>,
    /// The floating IP attached to it (translated to its first NIC), if any.
    #[serde(default)]
    pub floating_ip: Option<String>,
    /// The operation currently acting on the instance, if any.
    pub operation: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// What happens when its host dies (`restart`: on another host, after fencing); `None`:
    /// it stays `error` until its host is back or an operator evacuates it.
    #[serde(default)]
    pub ha: Option<HaPolicy>,
    /// Its restart priority (0 to 1000; high 900, medium 500, low 100): when a host dies,
    /// higher ones are restarted first. Kept, and shown, even without `ha`.
    #[serde(default = "default_ha_priority")]
    pub ha_priority: u16,
}

fn default_ha_priority() -> u16 {
    crate::HA_PRIORITY_MEDIUM
}

/// What made an instance ready (see docs/cloud-init.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReadySource {
    /// cloud-init reported to the metadata service that it finished (images booted with a
    /// cloud-init seed on a tenant network).
    Metadata,
    /// The image's ready line appeared on the serial console (images without cloud-init,
    /// such as the default busybox image).
    Console,
    /// The guest was restored from a snapshot, or arrived by live migration, in a state in
    /// which it was ready.
    Resumed,
}

impl ReadySource {
    /// The source as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            ReadySource::Metadata => "metadata",
            ReadySource::Console => "console",
            ReadySource::Resumed => "resumed",
        }
    }

    /// Parses a stored source.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "metadata" => ReadySource::Metadata,
            "console" => ReadySource::Console,
            "resumed" => ReadySource::Resumed,
            _ => return None,
        })
    }
}

/// High availability of an instance (see docs/hosts.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HaPolicy {
    /// Restart it on another host when its host is down (and has fenced itself).
    Restart,
}

/// Body of `POST /v1/instances`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CreateInstance {
    pub name: String,
    /// Required unless `from_snapshot` is given (a clone has its source's flavor).
    #[serde(default)]
    pub flavor: Option<String>,
    /// Required unless `from_snapshot` is given (a clone has its source's image).
    #[serde(default)]
    pub image: Option<String>,
    /// Start the instance as a clone resuming from this snapshot (id or name): same flavor
    /// and image as the snapshot's instance, a new identity (id, MAC, IP), on the snapshot's
    /// host.
    #[serde(default)]
    pub from_snapshot: Option<String>,
    /// Networks of the project to attach, one NIC each, in this order (default: the
    /// project's `default` network).
    #[serde(default)]
    pub networks: Vec<String>,
    /// Address of the first NIC (inside its network, free); default: the lowest free one.
    #[serde(default)]
    pub ip: Option<String>,
    /// The placement group (name) it joins: `spread` keeps members on distinct hosts,
    /// `pack` together.
    #[serde(default)]
    pub placement_group: Option<String>,
    /// `restart`: restart it on another host when its host dies: from its disk on shared
    /// storage, or, with a disk local to the host, from its latest snapshot replicated to
    /// the controller (what changed after that snapshot is lost; without one it stays
    /// `error`).
    #[serde(default)]
    pub ha: Option<HaPolicy>,
    /// Restart priority, 0 to 1000 (high 900, medium 500, low 100) [default: medium]: when a
    /// host dies its HA instances restart higher first, and lower ones stay `error` ("no
    /// capacity") when the other hosts lack room.
    #[serde(default)]
    pub ha_priority: Option<u16>,
    /// Keypair (`/v1/keypairs`) whose public key cloud-init installs in the guest.
    #[serde(default)]
    pub key_name: Option<String>,
    /// User-data for cloud-init, base64 (at most 16 KiB decoded, as EC2).
    #[serde(default)]
    pub user_data: Option<String>,
    /// Security groups of the project the instance is in (default: the project's `default`
    /// group).
    #[serde(default)]
    pub secgroups: Vec<String>,
}

/// Largest user-data accepted, decoded (EC2's limit).
pub const MAX_USER_DATA_BYTES: usize = 16 * 1024;

/// Body of `POST /v1/instances/{instance}/exec`: a command run inside the guest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ExecInstance {
    pub command: String,
    /// Seconds before the call gives up (default 30).
    pub timeout_secs: Option<u64>,
}

/// Result of a command run inside the guest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ExecOutput {
    pub exit_code: i32,
    pub output: String,
}

/// A piece of an instance's serial console log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ConsoleLog {
    pub offset: u64,
    pub next_offset: u64,
    pub data: String,
}

/// Body of `POST /v1/instances/{instance}/migrate`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MigrateInstance {
    /// Target host; the scheduler chooses when absent.
    pub to: Option<String>,
    /// Longest acceptable pause at switch-over (default 50 ms).
    pub max_downtime_ms: Option<u64>,
    /// Allow post-copy when pre-copy cannot converge (default false: abort instead).
    pub allow_postcopy: Option<bool>,
}
