//! Shared helpers of the agent's integration tests: an in-process agent served on
//! 127.0.0.1:0, bounded waits, process checks.

#![allow(dead_code)]

use nimbus_agent::{router, Agent, AgentConfig};
use nimbus_agent_api::{AgentClient, ExecRequest, VmStatus};
use std::path::Path;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

pub const TOKEN: &str = "test-token";

/// An agent serving its API on a loopback port.
pub struct TestAgent {
    pub agent: Agent,
    pub client: AgentClient,
    pub addr: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
}

impl TestAgent {
    /// Starts an agent on `state_dir` (TCG forced: the probe is tested elsewhere).
    pub async fn start(state_dir: &Path) -> Self {
        let config = AgentConfig {
            advertise_url: "http://127.0.0.1:0".into(),
            ..AgentConfig::in_process(
                "test-host",
                "127.0.0.1:0".parse().expect("addr"),
                state_dir.to_path_buf(),
                TOKEN,
            )
        };
        let agent = Agent::start(&config).await.expect("agent starts");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let app = router(agent.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        let client = AgentClient::new(&format!("http://{addr}"), TOKEN);
        Self {
            agent,
            client,
            addr,
            stop: Some(stop),
            server: Some(server),
        }
    }

    /// Stops serving and lets go of the VMs (their QEMU keeps running).
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
        }
        self.agent.shutdown().await;
    }
}

/// Polls the VM until `pred` holds, at most `limit`.
pub async fn wait_for(
    client: &AgentClient,
    id: Uuid,
    limit: Duration,
    what: &str,
    pred: impl Fn(&VmStatus) -> bool,
) -> VmStatus {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let status = client.vm(id).await.expect("vm status");
        if pred(&status) {
            return status;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for {what}; last status {status:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (bounded) until no process with `pid` remains (not even a zombie).
pub async fn wait_pid_gone(pid: u32) {
    for _ in 0..100 {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("process {pid} still exists");
}

/// Pids of QEMU processes whose command line mentions `dir`.
pub fn qemu_pids_for(dir: &Path) -> Vec<u32> {
    let needle = dir.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    let c = String::from_utf8_lossy(&c);
                    c.split('\0')
                        .next()
                        .is_some_and(|p| p.contains("qemu-system"))
                        && c.contains(&needle)
                })
                .unwrap_or(false)
        })
        .collect()
}

/// Kills leftover QEMU processes of a test directory (a failed test must not leak VMs).
pub struct QemuReaper(pub std::path::PathBuf);

impl Drop for QemuReaper {
    fn drop(&mut self) {
        for pid in qemu_pids_for(&self.0) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Runs `command` in the guest through the exec channel; panics unless it exits 0.
#[allow(dead_code)] // not every test binary execs
pub async fn exec(c: &AgentClient, id: Uuid, command: &str) -> String {
    let r = c
        .exec(
            id,
            &ExecRequest {
                command: command.into(),
                timeout_secs: 30,
            },
        )
        .await
        .unwrap_or_else(|e| panic!("exec {command:?}: {e}"));
    assert_eq!(r.exit_code, 0, "{command}: {}", r.output);
    r.output
}

/// The default guest image, or `None` (saying so, for `test`) when guest/build.sh has not
/// built it.
#[allow(dead_code)] // not every test binary boots the default guest
pub fn default_image(test: &str) -> Option<nimbus_agent::ImageManifest> {
    let dir = nimbus_agent::ImageManifest::default_dir();
    if !dir.join("image.json").is_file() {
        eprintln!("SKIPPED {test}: no guest image at {}", dir.display());
        return None;
    }
    Some(nimbus_agent::ImageManifest::load(&dir).expect("image manifest"))
}
