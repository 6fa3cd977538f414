//! QEMU, and nothing above it: no tenants, no database.
//!
//! - [`config`]: a typed VM configuration, turned into QEMU's argv (golden-tested).
//! - [`paths`]: the files of one VM directory (sockets, logs, pid file).
//! - [`process`]: launching QEMU in its own session, adopting a running one, killing it.
//! - [`qmp`]: an async QMP client with request ids, reply routing, timeouts and typed events.
//! - [`img`]: a `qemu-img` wrapper (overlays, resize, info).
//! - [`qcow2`]: the qcow2 header read and written directly (empty overlays, backing file).
//! - [`probe`]: QEMU version check and the accelerator probe (a real tiny boot).
//! - [`procfs`]: what `/proc` tells about a QEMU process (liveness, CPU time, RSS).

pub mod config;
pub mod img;
pub mod paths;
pub mod probe;
pub mod process;
pub mod procfs;
pub mod qcow2;
pub mod qmp;

pub use config::{Accel, QemuConfig};
pub use paths::VmPaths;
pub use process::{ExitInfo, ProcessError, QemuProcess};
pub use qmp::{Qmp, QmpError, QmpEvent};

/// The QEMU system emulator nimbus runs (overridable with `NIMBUS_QEMU`).
pub fn qemu_binary() -> String {
    std::env::var("NIMBUS_QEMU").unwrap_or_else(|_| "qemu-system-x86_64".to_string())
}

/// The `qemu-img` tool nimbus runs (overridable with `NIMBUS_QEMU_IMG`).
pub fn qemu_img_binary() -> String {
    std::env::var("NIMBUS_QEMU_IMG").unwrap_or_else(|_| "qemu-img".to_string())
}
