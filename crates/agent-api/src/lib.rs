//! The contract between the controller and the host agents.
//!
//! The controller decides (what runs where); the agent executes and owns the runtime state of
//! its VMs. Every VM status carries a `generation` that the agent bumps on each change, so the
//! controller can apply reports idempotently and ignore stale ones.
//!
//! Routes (all under [`AGENT_API_PREFIX`], bearer-token auth with the cluster's agent token):
//! ```text
//! GET    /host                      -> HostInventory
//! GET    /vms                       -> Vec<VmStatus>
//! PUT    /vms/{id}        VmSpec    -> VmStatus   define: write spec, create the disk (idempotent;
//!                                                 with shared storage in <dir>/<id>/, linked)
//! GET    /vms/{id}                  -> VmStatus
//! POST   /vms/{id}/start            -> VmStatus   launch QEMU (idempotent when running)
//! POST   /vms/{id}/stop   StopRequest -> VmStatus graceful power-off, then forced after timeout
//! POST   /vms/{id}/reboot           -> VmStatus
//! DELETE /vms/{id}                  -> 204        kill QEMU, remove disk and state (idempotent;
//!                                                 on shared storage also <dir>/<id>/)
//! GET    /vms/{id}/console/log?offset=N -> ConsoleChunk
//! GET    /vms/{id}/console          websocket: raw bytes to and from the serial console
//! POST   /vms/{id}/exec   ExecRequest -> ExecResult  run a command inside the guest
//! DELETE /vms/{id}?keep_disk=true   -> 204        same, but the disk stays (shared storage)
//! POST   /vms/{id}/migration/incoming IncomingRequest -> IncomingReady   (target side)
//! POST   /vms/{id}/migration/start    MigrateRequest  -> MigrationProgress (source side)
//! GET    /vms/{id}/migration          -> MigrationProgress                (source side)
//! POST   /vms/{id}/migration/cancel   -> MigrationProgress  cancel; the VM runs on at the source
//! PUT    /vms/{id}/cold   ColdIncomingRequest -> VmStatus  define a stopped VM moving here
//! GET    /vms/{id}/disk             -> bytes      a stopped VM's own disk (cold migration)
//! PUT    /vms/{id}/disk   bytes     -> 204        replace a cold-migrated VM's fresh disk
//! POST   /vms/{id}/snapshots  ...       checkpoints (see [`snapshot`])
//! GET    /vms/{id}/disk             -> bytes      a stopped VM's disk, flattened qcow2
//! GET    /vms/{id}/snapshot-set     -> SnapshotSetInventory   snapshots moving with a VM
//! POST   /chunks/missing  MissingChunks -> MissingChunks       (see [`snapshot_move`])
//! POST   /vms/{id}/snapshot-set/export ExportSnapshotSet -> bytes
//! PUT    /vms/{id}/snapshot-set?part=P  bytes -> ImportedSnapshotSet
//! ```
//! See [`migration`] for the sequence of a live migration.
//! The controller side is the endpoint `POST /v1/internal/hosts/register` ([`RegisterHost`]),
//! which agents call at start and periodically, so a restarted controller relearns its hosts,
//! and `POST /v1/internal/usage/samples` ([`UsageBatch`]), where agents push what they
//! measured (see [`metering`]), and `GET /v1/internal/images/{hex}`, where agents fetch the
//! bytes of uploaded images (see [`image`]).

pub mod client;
pub mod enrol;
pub mod error;
pub mod firewall;
pub mod host;
pub mod image;
pub mod liveness;
pub mod metering;
pub mod migration;
pub mod snapshot;
pub mod snapshot_move;
pub mod vm;

pub use client::AgentClient;
pub use enrol::{clock_skew, EnrolRequest, EnrolResponse, MAX_CLOCK_SKEW_SECS};
pub use error::{AgentError, AgentErrorBody};
pub use firewall::{
    FirewallApplied, FirewallRule, FloatingNat, GroupMembers, HostFirewall, NameRecord,
    NetworkNames, PortFirewall, Remote,
};
pub use host::{
    capability, Accelerator, HostInventory, KsmStats, NetworkConfig, RegisterHost, RegisterResponse,
};
pub use image::{CachedImage, ImageBlob, ImageCacheReport};
pub use metering::{MeterKind, UsageAck, UsageBatch, UsageSample};
pub use migration::{
    ColdIncomingRequest, DiskTransfer, IncomingReady, IncomingRequest, MigrateRequest,
    MigrationCredential, MigrationPhase, MigrationPolicy, MigrationProgress, NbdTarget,
};
pub use snapshot::{
    CloneRequest, DeleteSnapshotResult, RestoreRequest, RestoreResult, SnapshotRequest,
    SnapshotResult,
};
pub use snapshot_move::{
    ExportSnapshotSet, ImportSnapshotSet, ImportedSnapshotSet, MissingChunks, SnapshotSetInventory,
    SnapshotSetPart,
};
pub use vm::{
    CloudInitSeed, ConsoleChunk, DiskSpec, ExecRequest, ExecResult, GuestImage, NicSpec,
    StopRequest, VmRunState, VmSpec, VmStatus, CLOUD_INIT_READY_MARKER,
};

/// Path prefix of every agent route.
pub const AGENT_API_PREFIX: &str = "/agent/v1";
