//! How `nimbus up` keeps its child processes (agents, extra controllers) running, as systemd
//! would on a real machine: a child that exits is started again after a back-off that
//! doubles while it keeps dying young; on stop it gets SIGTERM, then SIGKILL after 10 s.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::watch;

/// The first restart's delay; it doubles (up to [`MAX_BACKOFF`]) while the child keeps dying
/// young, and comes back to this once a child ran longer than [`HEALTHY_RUN`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const HEALTHY_RUN: Duration = Duration::from_secs(30);
/// How long a child has to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// One supervised child, for logs and its pid file.
pub(super) struct Unit {
    /// What it is, in log lines: "agent", "controller".
    pub kind: &'static str,
    /// Which one: "host1", "ctl2".
    pub name: String,
    /// Where its pid is written at each start.
    pub pid_file: PathBuf,
    /// Where its output goes (named in the restart log line).
    pub log: PathBuf,
}

/// Why a start did not give a process.
pub(super) enum StartError {
    /// Something it needs is not there yet (the API that hands out join tokens is still
    /// starting): tried again soon, without a warning.
    NotYet(anyhow::Error),
    /// Starting it failed: logged, tried again after the back-off.
    Failed(anyhow::Error),
}

/// A `tokio` command for a child that must not outlive the `nimbus up` that started it (the
/// kernel sends it SIGTERM when `nimbus up` dies; the VMs an agent runs are not its children
/// and keep running).
pub(super) fn child_command(program: &std::path::Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(program);
    #[allow(unsafe_code)]
    // SAFETY: the closure runs between fork and exec and only calls prctl(2), which is
    // async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)
        });
    }
    cmd
}

/// Runs `unit` until `stop` says so, starting it with `start` (its first process may be
/// given as `first`, when the caller started it to report an error at once) and again each
/// time it exits.
pub(super) async fn supervise<S, F>(
    unit: Unit,
    first: Option<tokio::process::Child>,
    mut start: S,
    mut stop: watch::Receiver<bool>,
) where
    S: FnMut() -> F,
    F: Future<Output = Result<tokio::process::Child, StartError>>,
{
    let mut backoff = FIRST_BACKOFF;
    let mut next = first;
    loop {
        let mut child = match next.take() {
            Some(c) => c,
            None => match start().await {
                Ok(c) => c,
                Err(StartError::NotYet(e)) => {
                    tracing::debug!(kind = unit.kind, name = %unit.name, error = %e, "not ready to start; retrying");
                    if pause_or_stop(FIRST_BACKOFF, &mut stop).await {
                        return;
                    }
                    continue;
                }
                Err(StartError::Failed(e)) => {
                    tracing::error!(kind = unit.kind, name = %unit.name, error = %e, "cannot start it");
                    if pause_or_stop(backoff, &mut stop).await {
                        return;
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            },
        };
        let started = tokio::time::Instant::now();
        let pid = child.id();
        if let Some(pid) = pid {
            let _ = std::fs::write(&unit.pid_file, pid.to_string());
        }
        tokio::select! {
            status = child.wait() => {
                if started.elapsed() >= HEALTHY_RUN {
                    backoff = FIRST_BACKOFF;
                }
                tracing::warn!(
                    name = %unit.name,
                    ?status,
                    restart_in_ms = backoff.as_millis() as u64,
                    log = %unit.log.display(),
                    "{} exited; restarting it", unit.kind
                );
                if pause_or_stop(backoff, &mut stop).await {
                    return;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            () = stopped(&mut stop) => {
                terminate(&unit, pid, &mut child).await;
                return;
            }
        }
    }
}

/// SIGTERM, then SIGKILL if it has not exited after [`STOP_GRACE`].
async fn terminate(unit: &Unit, pid: Option<u32>, child: &mut tokio::process::Child) {
    if let Some(pid) = pid {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    }
    if tokio::time::timeout(STOP_GRACE, child.wait())
        .await
        .is_err()
    {
        tracing::warn!(kind = unit.kind, name = %unit.name, "did not stop within 10 s; killing it");
        let _ = child.kill().await;
    }
}

/// Sleeps `delay`; true when stop was requested meanwhile.
async fn pause_or_stop(delay: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        () = tokio::time::sleep(delay) => false,
        () = stopped(stop) => true,
    }
}

/// Resolves once stop is requested (or the sender is gone).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}
