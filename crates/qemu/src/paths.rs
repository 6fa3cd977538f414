//! The files QEMU uses in one VM directory.
//!
//! ```text
//! <dir>/qmp.sock        QMP monitor (one client at a time)
//! <dir>/console.sock    serial 0: the guest console (one client at a time)
//! <dir>/console.log     everything the guest printed on serial 0 (appended across boots)
//! <dir>/heartbeat.sock  serial 1: the guest's heartbeat lines
//! <dir>/exec.sock       serial 2: the guest's command channel
//! <dir>/qemu.pid        QEMU's pid file
//! <dir>/qemu.log        QEMU's stdout and stderr
//! ```

use std::path::{Path, PathBuf};

/// Paths of the QEMU files inside one VM directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmPaths {
    dir: PathBuf,
}

impl VmPaths {
    /// Paths inside `dir` (which should be absolute: QEMU and `/proc` checks see it verbatim).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The VM directory itself.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// QMP monitor socket.
    pub fn qmp_sock(&self) -> PathBuf {
        self.dir.join("qmp.sock")
    }

    /// Serial console socket.
    pub fn console_sock(&self) -> PathBuf {
        self.dir.join("console.sock")
    }

    /// Serial console log (QEMU's chardev logfile).
    pub fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }

    /// Heartbeat serial socket.
    pub fn heartbeat_sock(&self) -> PathBuf {
        self.dir.join("heartbeat.sock")
    }

    /// Exec serial socket.
    pub fn exec_sock(&self) -> PathBuf {
        self.dir.join("exec.sock")
    }

    /// QEMU pid file.
    pub fn pid_file(&self) -> PathBuf {
        self.dir.join("qemu.pid")
    }

    /// QEMU's stdout and stderr.
    pub fn qemu_log(&self) -> PathBuf {
        self.dir.join("qemu.log")
    }

    /// The sockets QEMU creates; stale ones are removed before a launch.
    pub fn sockets(&self) -> [PathBuf; 4] {
        [
            self.qmp_sock(),
            self.console_sock(),
            self.heartbeat_sock(),
            self.exec_sock(),
        ]
    }
}
