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
//! PUT    /vms/{id}        VmSpec    -> VmStatus   define: write spec, create the disk (idempotent)
//! GET    /vms/{id}                  -> VmStatus
//! POST   /vms/{id}/start            -> VmStatus   launch QEMU (idempotent when running)
//! POST   /vms/{id}/stop   StopRequest -> VmStatus graceful power-off, then forced after timeout
//! POST   /vms/{id}/reboot           -> VmStatus
//! DELETE /vms/{id}                  -> 204        kill QEMU, remove disk and state (idempotent)
//! GET    /vms/{id}/console/log?offset=N -> ConsoleChunk
//! GET    /vms/{id}/console          websocket: raw bytes to and from the serial console
//! POST   /vms/{id}/exec   ExecRequest -> ExecResult  run a command inside the guest
//! ```
//! The controller side is the endpoint `POST /v1/internal/hosts/register` ([`RegisterHost`]),
//! which agents call at start and periodically, so a restarted controller relearns its hosts.

pub mod client;
pub mod error;
pub mod host;
pub mod vm;

pub use client::AgentClient;
pub use error::{AgentError, AgentErrorBody};
pub use host::{Accelerator, HostInventory, RegisterHost};
pub use vm::{
    ConsoleChunk, DiskSpec, ExecRequest, ExecResult, GuestImage, StopRequest, VmRunState, VmSpec,
    VmStatus,
};

/// Path prefix of every agent route.
pub const AGENT_API_PREFIX: &str = "/agent/v1";
