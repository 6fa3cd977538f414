//! VM specification and runtime status as exchanged with an agent.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use uuid::Uuid;

/// Everything an agent needs to run one VM. Written once at define time; the agent keeps it in
/// the VM's state directory so that it can relaunch or re-adopt the VM without the controller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmSpec {
    /// The instance id; also the name of the VM's state directory on the host.
    pub id: Uuid,
    /// Human name, used as the guest hostname.
    pub name: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub image: GuestImage,
    pub disk: DiskSpec,
    /// Network interfaces, one per tenant network, in the guest's order.
    #[serde(default)]
    pub nics: Vec<NicSpec>,
    /// An HA instance: the agent stops it when it has been cut off from the controller for
    /// longer than the fence timeout ([`crate::liveness::FENCE_TIMEOUT`]), since the
    /// controller then restarts it elsewhere.
    #[serde(default)]
    pub ha: bool,
    /// A cloud-init NoCloud seed, attached as a small disk labelled `cidata`.
    #[serde(default)]
    pub seed: Option<CloudInitSeed>,
}

/// The ready marker uploaded images get by default: images without cloud-init print it
/// themselves; a seeded guest with no tenant network has cloud-init print it at its end
/// (vendor-data's `final_message`). A seeded guest on a tenant network reports to the
/// metadata service instead, and does not print it.
pub const CLOUD_INIT_READY_MARKER: &str = "nimbus-guest ready";

/// What cloud-init reads from the NoCloud seed: identity, key, user-data, addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloudInitSeed {
    /// `instance-id` (the instance's id: cloud-init runs its once-per-instance steps once).
    pub instance_id: String,
    /// `local-hostname`.
    pub hostname: String,
    /// OpenSSH public keys for the image's default user.
    #[serde(default)]
    pub public_keys: Vec<String>,
    /// Base64 of the user-data (at most 16 KiB decoded).
    #[serde(default)]
    pub user_data: Option<String>,
}

/// A virtio NIC on the cloud network. MAC and IP belong to the instance and move with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NicSpec {
    /// e.g. `52:54:00:12:34:56`.
    pub mac: String,
    /// Address with prefix, e.g. `10.200.0.5/16`; the guest configures it from its kernel
    /// command line (`nimbus.ip=`), so it needs no DHCP server.
    pub ip: String,
    /// Default gateway of the network, if any.
    pub gateway: Option<String>,
    /// Segment id of the NIC's tenant network: the host puts the NIC on that network's own
    /// bridge and VXLAN device. `None`: the former single flat network (bridge `nimbus0`),
    /// for VMs defined before tenant networks existed.
    #[serde(default)]
    pub vni: Option<u32>,
}

/// How to boot the guest. Paths are absolute paths on the host (images live in a directory
/// every agent can read; see docs/images.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuestImage {
    pub name: String,
    /// Kernel for direct boot; `None` boots from the disk.
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub cmdline: Option<String>,
    /// Read-only base disk the instance disk is a copy-on-write overlay of.
    pub base_disk: Option<PathBuf>,
    /// An uploaded image: the base disk is the agent's cached copy of these bytes.
    #[serde(default)]
    pub blob: Option<crate::ImageBlob>,
    /// A console line the guest prints when its userspace is up (e.g. `nimbus-guest ready`).
    pub ready_marker: Option<String>,
    /// Boot the disk through UEFI (OVMF, with the VM's own EFI variables file) instead of
    /// SeaBIOS.
    #[serde(default)]
    pub uefi: bool,
}

/// The instance's own disk: a qcow2 overlay on the image's base disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiskSpec {
    /// Virtual size of the instance disk.
    pub size_gib: u64,
}

/// What the agent knows of a VM right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmRunState {
    /// Defined (disk created), not running.
    Stopped,
    /// QEMU is being launched.
    Starting,
    /// QEMU runs the guest.
    Running,
    /// A graceful stop is in progress.
    Stopping,
    /// QEMU exited without being asked to, or failed to start; see `reason`.
    Crashed,
    /// A live migration away from this host completed: QEMU is paused here (`postmigrate`)
    /// and the guest runs on the target. Not a crash: the source copy waits to be deleted
    /// (`DELETE /vms/{id}`) or resumed here (`POST /vms/{id}/migration/cancel`).
    Migrated,
}

/// Runtime status of one VM, owned by the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmStatus {
    pub id: Uuid,
    pub state: VmRunState,
    /// Bumped by the agent on every change of this status.
    pub generation: u64,
    /// Why the VM is in `crashed` (QEMU's stderr tail, exit reason).
    pub reason: Option<String>,
    pub pid: Option<u32>,
    /// The guest is up since its last (re)boot: see `ready_via`.
    pub guest_ready: bool,
    /// What made it ready, while `guest_ready`.
    #[serde(default)]
    pub ready_via: Option<nimbus_api::ReadySource>,
    /// When the current QEMU process was started.
    pub started_at: Option<DateTime<Utc>>,
    /// Milliseconds since the last heartbeat line from the guest, if any arrived.
    pub heartbeat_age_ms: Option<u64>,
    /// CPU time consumed by the QEMU process, in nanoseconds.
    pub cpu_time_ns: u64,
    /// Resident memory of the QEMU process, in bytes.
    pub rss_bytes: u64,
    /// Bytes the instance disk occupies on the host (copy-on-write overlay only).
    pub disk_allocated_bytes: u64,
    /// Path of the instance disk on this host.
    #[serde(default)]
    pub disk_path: Option<PathBuf>,
    /// QEMU waits for an incoming migration (target side).
    #[serde(default)]
    pub incoming: bool,
    /// Unix time (ms) of the RESUME event of the current QEMU (on a migration target: when the
    /// guest started running here).
    #[serde(default)]
    pub resumed_unix_ms: Option<u64>,
    /// Unix time (ms) of the first heartbeat line received from the current QEMU.
    #[serde(default)]
    pub first_heartbeat_unix_ms: Option<u64>,
}

impl VmStatus {
    /// A status at generation 1 with nothing measured or reported yet: the base that
    /// stand-ins and tests fill in (`VmStatus { pid: Some(..), ..VmStatus::new(id, state) }`).
    pub fn new(id: Uuid, state: VmRunState) -> Self {
        Self {
            id,
            state,
            generation: 1,
            reason: None,
            pid: None,
            guest_ready: false,
            ready_via: None,
            started_at: None,
            heartbeat_age_ms: None,
            cpu_time_ns: 0,
            rss_bytes: 0,
            disk_allocated_bytes: 0,
            disk_path: None,
            incoming: false,
            resumed_unix_ms: None,
            first_heartbeat_unix_ms: None,
        }
    }
}

/// Parameters of a stop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StopRequest {
    /// Skip the graceful power-off and end QEMU at once.
    #[serde(default)]
    pub force: bool,
    /// How long the guest may take to power off before it is forced.
    #[serde(default = "default_stop_timeout")]
    pub timeout_secs: u64,
}

fn default_stop_timeout() -> u64 {
    20
}

impl Default for StopRequest {
    fn default() -> Self {
        Self {
            force: false,
            timeout_secs: default_stop_timeout(),
        }
    }
}

/// A piece of the serial console log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsoleChunk {
    /// Offset of `data` in the log.
    pub offset: u64,
    /// Offset to ask for next.
    pub next_offset: u64,
    /// Console output, lossily decoded as UTF-8.
    pub data: String,
}

/// A command to run inside the guest (through the guest's exec channel).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// Shell command line, run with `sh -c`.
    pub command: String,
    #[serde(default = "default_exec_timeout")]
    pub timeout_secs: u64,
}

fn default_exec_timeout() -> u64 {
    30
}

/// Outcome of a command run inside the guest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecResult {
    pub exit_code: i32,
    /// Standard output and error, interleaved.
    pub output: String,
}
