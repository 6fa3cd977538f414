//! Launching, adopting and ending QEMU processes.
//!
//! A launched QEMU runs in a session of its own (it survives the agent and is not hit by the
//! agent's terminal signals), with stdin closed and stdout+stderr in `qemu.log`. While the
//! launching agent lives it is QEMU's parent, so a task reaps the child as soon as it exits
//! (no zombie remains). A process found through its pid file after an agent restart is
//! *adopted*: it is not our child, so its exit is noticed by polling `/proc`.

use crate::config::QemuConfig;
use crate::paths::VmPaths;
use crate::procfs;
use crate::qmp::{Qmp, QmpError};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::{sleep, timeout, Instant};

/// How a QEMU process ended. Both fields are `None` for an adopted process (not our child:
/// its exit status cannot be known).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

impl std::fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code, self.signal) {
            (Some(c), _) => write!(f, "exit code {c}"),
            (None, Some(s)) => write!(f, "killed by signal {s}"),
            (None, None) => f.write_str("exit status unknown"),
        }
    }
}

/// What launching or ending QEMU can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot prepare {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("QEMU exited during startup ({exit}): {log_tail}")]
    ExitedEarly { exit: ExitInfo, log_tail: String },
    #[error("QMP socket {path} accepted no connection within {timeout:?}")]
    QmpTimeout { path: PathBuf, timeout: Duration },
    #[error("QEMU's monitor failed during startup")]
    Qmp(#[source] QmpError),
    #[error("cannot signal QEMU (pid {pid})")]
    Signal {
        pid: u32,
        #[source]
        source: nix::Error,
    },
    #[error("QEMU (pid {pid}) is still alive after SIGKILL")]
    Unkillable { pid: u32 },
}

/// A running (or just exited) QEMU process of one VM directory.
#[derive(Debug)]
pub struct QemuProcess {
    pid: u32,
    /// `/proc` start time, guarding signals against pid reuse.
    starttime: Option<u64>,
    paths: VmPaths,
    exited: watch::Receiver<Option<ExitInfo>>,
    adopted: bool,
}

impl QemuProcess {
    /// Starts `program` with `config`'s argv for the VM in `paths`. Returns once the process
    /// exists; call [`QemuProcess::wait_for_qmp`] to know it is up.
    pub fn spawn(
        program: &str,
        config: &QemuConfig,
        paths: &VmPaths,
    ) -> Result<Self, ProcessError> {
        let log_path = paths.qemu_log();
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ProcessError::Io { path, source }
        };
        if log_path.exists() {
            let old = log_path.with_extension("log.old");
            std::fs::rename(&log_path, &old).map_err(io(&old))?;
        }
        for sock in paths.sockets() {
            match std::fs::remove_file(&sock) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&sock)(e)),
                _ => {}
            }
        }
        let log = File::create(&log_path).map_err(io(&log_path))?;
        let log_err = log.try_clone().map_err(io(&log_path))?;
        let mut cmd = tokio::process::Command::new(program);
        // Its own directory as working directory: files given to it later by a relative path
        // (TLS credentials) are reachable however closed the directories above are to its
        // unprivileged user.
        cmd.args(config.argv())
            .current_dir(paths.dir())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .kill_on_drop(false);
        new_session(&mut cmd);
        let mut child = cmd.spawn().map_err(|source| ProcessError::Spawn {
            program: program.to_string(),
            source,
        })?;
        let pid = child.id().ok_or_else(|| ProcessError::ExitedEarly {
            exit: ExitInfo {
                code: None,
                signal: None,
            },
            log_tail: log_tail(&log_path),
        })?;
        let (tx, rx) = watch::channel(None);
        tokio::spawn(async move {
            let info = match child.wait().await {
                Ok(status) => {
                    use std::os::unix::process::ExitStatusExt;
                    ExitInfo {
                        code: status.code(),
                        signal: status.signal(),
                    }
                }
                Err(e) => {
                    tracing::warn!(pid, error = %e, "waiting for QEMU failed");
                    ExitInfo {
                        code: None,
                        signal: None,
                    }
                }
            };
            tracing::debug!(pid, %info, "QEMU exited");
            tx.send_replace(Some(info));
        });
        tracing::info!(pid, dir = %paths.dir().display(), "QEMU launched");
        Ok(Self {
            pid,
            starttime: procfs::read_stat(pid).map(|s| s.starttime),
            paths: paths.clone(),
            exited: rx,
            adopted: false,
        })
    }

    /// Waits until QEMU's monitor answers: connects to the QMP socket and negotiates
    /// capabilities. QEMU listens before its machine is set up but greets only from its
    /// main loop, so a greeting means the machine was created. If QEMU exits first, the
    /// error carries the tail of `qemu.log` (QEMU's own explanation).
    pub async fn wait_for_qmp(&mut self, limit: Duration) -> Result<Qmp, ProcessError> {
        let deadline = Instant::now() + limit;
        let sock = self.paths.qmp_sock();
        loop {
            if let Some(exit) = *self.exited.borrow() {
                return Err(self.early_exit(exit));
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(ProcessError::QmpTimeout {
                    path: sock,
                    timeout: limit,
                });
            }
            let attempt = tokio::select! {
                r = Qmp::connect(&sock, remaining) => r,
                _ = self.exited.changed() => continue,
            };
            match attempt {
                Ok(qmp) => return Ok(qmp),
                Err(QmpError::Connect { .. }) => {
                    tokio::select! {
                        _ = sleep(Duration::from_millis(50)) => {}
                        _ = self.exited.changed() => {}
                    }
                }
                Err(e) => {
                    // The monitor hung up or failed: QEMU is most likely on its way out.
                    if let Ok(exit) = timeout(Duration::from_secs(2), self.wait_exit()).await {
                        return Err(self.early_exit(exit));
                    }
                    return Err(ProcessError::Qmp(e));
                }
            }
        }
    }

    fn early_exit(&self, exit: ExitInfo) -> ProcessError {
        ProcessError::ExitedEarly {
            exit,
            log_tail: log_tail(&self.paths.qemu_log()),
        }
    }

    /// Finds the QEMU of the VM directory `paths` through its pid file. `None` when there is
    /// no pid file, or its process is gone, or it is not a QEMU of this directory.
    pub fn adopt(paths: &VmPaths) -> Option<Self> {
        let text = std::fs::read_to_string(paths.pid_file()).ok()?;
        let pid: u32 = text.trim().parse().ok()?;
        let cmdline = procfs::read_cmdline(pid)?;
        if !procfs::cmdline_is_qemu_for(&cmdline, paths.dir()) {
            tracing::debug!(pid, dir = %paths.dir().display(), "pid file names another process");
            return None;
        }
        let stat = procfs::read_stat(pid)?;
        if stat.is_exited() {
            return None;
        }
        let (tx, rx) = watch::channel(None);
        let starttime = stat.starttime;
        tokio::spawn(async move {
            loop {
                sleep(Duration::from_millis(250)).await;
                if tx.is_closed() {
                    return;
                }
                let gone = procfs::read_stat(pid)
                    .is_none_or(|s| s.is_exited() || s.starttime != starttime);
                if gone {
                    tx.send_replace(Some(ExitInfo {
                        code: None,
                        signal: None,
                    }));
                    return;
                }
            }
        });
        tracing::info!(pid, dir = %paths.dir().display(), "adopted running QEMU");
        Some(Self {
            pid,
            starttime: Some(starttime),
            paths: paths.clone(),
            exited: rx,
            adopted: true,
        })
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The process was found through its pid file rather than launched by us.
    pub fn is_adopted(&self) -> bool {
        self.adopted
    }

    /// The VM directory of this process.
    pub fn paths(&self) -> &VmPaths {
        &self.paths
    }

    /// How the process ended, if it has.
    pub fn exit_info(&self) -> Option<ExitInfo> {
        *self.exited.borrow()
    }

    /// The process still runs.
    pub fn is_alive(&self) -> bool {
        self.exit_info().is_none() && self.same_process()
    }

    fn same_process(&self) -> bool {
        match (procfs::read_stat(self.pid), self.starttime) {
            (Some(s), Some(t)) => !s.is_exited() && s.starttime == t,
            (Some(s), None) => !s.is_exited(),
            (None, _) => false,
        }
    }

    /// Waits until the process exits (cancel-safe).
    pub async fn wait_exit(&mut self) -> ExitInfo {
        loop {
            if let Some(info) = *self.exited.borrow_and_update() {
                return info;
            }
            if self.exited.changed().await.is_err() {
                return ExitInfo {
                    code: None,
                    signal: None,
                };
            }
        }
    }

    /// Ends the process: SIGTERM, then SIGKILL after `grace`. Returns how it ended.
    pub async fn kill(&mut self, grace: Duration) -> Result<ExitInfo, ProcessError> {
        if let Some(info) = self.exit_info() {
            return Ok(info);
        }
        if !grace.is_zero() {
            self.signal(Signal::SIGTERM)?;
            if let Ok(info) = timeout(grace, self.wait_exit()).await {
                return Ok(info);
            }
        }
        self.signal(Signal::SIGKILL)?;
        timeout(Duration::from_secs(10), self.wait_exit())
            .await
            .map_err(|_| ProcessError::Unkillable { pid: self.pid })
    }

    /// Sends SIGKILL now without waiting (for drop guards, which cannot wait).
    pub fn kill_now(&self) -> Result<(), ProcessError> {
        if self.exit_info().is_some() {
            return Ok(());
        }
        self.signal(Signal::SIGKILL)
    }

    fn signal(&self, signal: Signal) -> Result<(), ProcessError> {
        if !self.same_process() {
            return Ok(());
        }
        tracing::debug!(pid = self.pid, ?signal, "signalling QEMU");
        let pid = i32::try_from(self.pid).map_err(|_| ProcessError::Signal {
            pid: self.pid,
            source: nix::Error::EINVAL,
        })?;
        match kill(Pid::from_raw(pid), signal) {
            Ok(()) | Err(nix::Error::ESRCH) => Ok(()),
            Err(source) => Err(ProcessError::Signal {
                pid: self.pid,
                source,
            }),
        }
    }
}

/// Makes the child the leader of a new session (`setsid`), so that it outlives the agent and
/// receives none of the signals sent to the agent's process group or terminal.
#[allow(unsafe_code)]
fn new_session(cmd: &mut tokio::process::Command) {
    // SAFETY: the closure runs between fork and exec and only calls setsid(2), which is
    // async-signal-safe; it touches no memory shared with the parent.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
}

/// The last lines (at most 20, at most 4 KiB) of a log file; empty if it cannot be read.
pub fn log_tail(path: &Path) -> String {
    const MAX_BYTES: u64 = 4096;
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if file
        .seek(SeekFrom::Start(len.saturating_sub(MAX_BYTES)))
        .is_err()
    {
        return String::new();
    }
    let mut buf = Vec::new();
    if file.read_to_end(&mut buf).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

#[cfg(test)]
mod tests;
