//! Running iproute2 (`ip`, `bridge`) in the agent's network namespace, or in a named one
//! (`-n <netns>`, which the integration tests use to play several hosts on one machine).

use super::error::NetError;
use std::time::Duration;

/// How long one command may take; they normally take milliseconds.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// Where network commands run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shell {
    netns: Option<String>,
    /// The mount namespace named network namespaces are made in (`None`: the agent's own).
    netns_mounts: Option<String>,
}

impl Shell {
    /// The namespace of the agent process.
    pub fn here() -> Self {
        Self::default()
    }

    /// The named namespace (`ip netns` name).
    pub fn in_netns(name: impl Into<String>) -> Self {
        Self {
            netns: Some(name.into()),
            netns_mounts: None,
        }
    }

    /// Named network namespaces made and deleted in the mount namespace `path` (e.g.
    /// `/proc/<pid>/ns/mnt`).
    pub fn with_netns_mounts(mut self, path: Option<String>) -> Self {
        self.netns_mounts = path;
        self
    }

    /// The mount namespace of [`Shell::with_netns_mounts`], if set.
    pub fn netns_mounts(&self) -> Option<&str> {
        self.netns_mounts.as_deref()
    }

    /// `ip [-n NS] <args>`.
    pub fn ip<S: AsRef<str>>(&self, args: &[S]) -> Cmd {
        self.cmd("ip", args)
    }

    /// `bridge [-n NS] <args>`.
    pub fn bridge<S: AsRef<str>>(&self, args: &[S]) -> Cmd {
        self.cmd("bridge", args)
    }

    /// The network namespace commands run in (`None`: the agent's own).
    pub fn netns(&self) -> Option<&str> {
        self.netns.as_deref()
    }

    /// `nft ARGS` (inside the namespace: `ip netns exec NS nft ARGS`).
    pub fn nft<S: AsRef<str>>(&self, args: &[S]) -> Cmd {
        self.exec("nft", args)
    }

    /// `ip netns ARGS` (adding or deleting a named network namespace), in the mount
    /// namespace of [`Shell::with_netns_mounts`] when set: an agent started by `ip netns
    /// exec` has a mount namespace of its own, where the bind mount naming a new namespace
    /// would stay (invisible to everyone else, and to the agent itself once restarted);
    /// mounts made in the machine's reach the agent's too (it is their slave).
    pub fn netns_named<S: AsRef<str>>(&self, args: &[S]) -> Cmd {
        let mut all = match &self.netns_mounts {
            Some(mounts) => vec![format!("--mount={mounts}"), "ip".into()],
            None => Vec::new(),
        };
        all.push("netns".into());
        all.extend(args.iter().map(|a| a.as_ref().to_string()));
        Cmd {
            program: if self.netns_mounts.is_some() {
                "nsenter"
            } else {
                "ip"
            },
            args: all,
        }
    }

    /// `sysctl ARGS` (inside the namespace: `ip netns exec NS sysctl ARGS`).
    pub fn sysctl<S: AsRef<str>>(&self, args: &[S]) -> Cmd {
        self.exec("sysctl", args)
    }

    /// A program without a namespace option of its own, run in the namespace.
    fn exec<S: AsRef<str>>(&self, program: &'static str, args: &[S]) -> Cmd {
        let mut all: Vec<String> = match &self.netns {
            Some(ns) => vec!["netns".into(), "exec".into(), ns.clone(), program.into()],
            None => Vec::new(),
        };
        all.extend(args.iter().map(|a| a.as_ref().to_string()));
        Cmd {
            program: if self.netns.is_some() { "ip" } else { program },
            args: all,
        }
    }

    fn cmd<S: AsRef<str>>(&self, program: &'static str, args: &[S]) -> Cmd {
        let mut all = Vec::with_capacity(args.len() + 2);
        if let Some(ns) = &self.netns {
            all.push("-n".to_string());
            all.push(ns.clone());
        }
        all.extend(args.iter().map(|a| a.as_ref().to_string()));
        Cmd { program, args: all }
    }
}

/// One command line, built before it runs so that tests can check it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmd {
    pub program: &'static str,
    pub args: Vec<String>,
}

/// What a finished command printed.
#[derive(Debug)]
pub struct Finished {
    pub success: bool,
    pub status: String,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Display for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.program)?;
        for a in &self.args {
            write!(f, " {a}")?;
        }
        Ok(())
    }
}

impl Cmd {
    /// Runs the command and returns its standard output; a non-zero exit is an error carrying
    /// the command and its standard error.
    pub async fn run(&self) -> Result<String, NetError> {
        let done = self.output().await?;
        if !done.success {
            return Err(self.failed(&done));
        }
        Ok(done.stdout)
    }

    /// Runs the command; the caller interprets a failure (e.g. "does not exist").
    pub async fn output(&self) -> Result<Finished, NetError> {
        self.output_with(None).await
    }

    /// Runs the command with `input` on its standard input; fails unless it succeeds.
    pub async fn run_with_input(&self, input: &str) -> Result<String, NetError> {
        let done = self.output_with(Some(input)).await?;
        if !done.success {
            return Err(self.failed(&done));
        }
        Ok(done.stdout)
    }

    async fn output_with(&self, input: Option<&str>) -> Result<Finished, NetError> {
        tracing::debug!(command = %self, "network command");
        let spawn_error = |source| NetError::Spawn {
            command: self.to_string(),
            source,
        };
        let mut child = tokio::process::Command::new(self.program)
            .args(&self.args)
            .stdin(if input.is_some() {
                std::process::Stdio::piped()
            } else {
                std::process::Stdio::null()
            })
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(spawn_error)?;
        if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
            use tokio::io::AsyncWriteExt;
            stdin
                .write_all(input.as_bytes())
                .await
                .map_err(spawn_error)?;
        }
        let out = tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| NetError::Timeout {
                command: self.to_string(),
                secs: COMMAND_TIMEOUT.as_secs(),
            })?
            .map_err(|source| NetError::Spawn {
                command: self.to_string(),
                source,
            })?;
        Ok(Finished {
            success: out.status.success(),
            status: out.status.to_string(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }

    /// The error for a failed run.
    pub fn failed(&self, done: &Finished) -> NetError {
        NetError::Failed {
            command: self.to_string(),
            status: done.status.clone(),
            stderr: done.stderr.clone(),
        }
    }
}

/// Whether iproute2's complaint means the named device is absent.
pub fn no_such_device(stderr: &str) -> bool {
    stderr.contains("does not exist") || stderr.contains("Cannot find device")
}

/// Moves the calling thread (only it) into the named network namespace `ns`: run it on a
/// thread of its own, never on one of tokio's pool.
pub fn enter_netns(ns: &str) -> Result<(), String> {
    let file = std::fs::File::open(format!("/run/netns/{ns}")).map_err(|e| e.to_string())?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("enter netns {ns}: {e}"))
}

/// Whether a blocking read's error only means "nothing yet": its timeout, or a signal (the
/// agent's child processes exiting) interrupting the wait. A server thread goes on reading.
pub fn nothing_yet(kind: std::io::ErrorKind) -> bool {
    use std::io::ErrorKind::{Interrupted, TimedOut, WouldBlock};
    matches!(kind, WouldBlock | TimedOut | Interrupted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netns_prefix_goes_before_the_arguments() {
        let cmd = Shell::in_netns("h1").bridge(&["fdb", "show", "dev", "nimbus-vx"]);
        assert_eq!(cmd.to_string(), "bridge -n h1 fdb show dev nimbus-vx");
        let cmd = Shell::here().ip(&["link", "show"]);
        assert_eq!(cmd.args, ["link", "show"]);
    }

    #[test]
    fn absent_device_messages() {
        assert!(no_such_device("Device \"nimbus0\" does not exist."));
        assert!(no_such_device("Cannot find device \"nt0123456789\""));
        assert!(!no_such_device(
            "RTNETLINK answers: Operation not permitted"
        ));
    }

    #[tokio::test]
    async fn failures_carry_the_command_and_stderr() {
        let err = Shell::here()
            .ip(&["link", "show", "dev", "nimbus-no-such-device"])
            .run()
            .await
            .expect_err("must fail");
        let msg = err.to_string();
        assert!(
            msg.contains("`ip link show dev nimbus-no-such-device` failed"),
            "{msg}"
        );
        assert!(msg.contains("does not exist"), "{msg}");
    }
}
