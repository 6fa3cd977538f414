//! The host agents of `nimbus up`: child processes, supervised (restarted when they die, as
//! systemd would on a real host). Each writes its pid to `<state dir>/agent.pid` and its log
//! to `<state dir>/agent.log`.

use super::network::HostNetwork;
use super::supervise::{child_command, supervise, StartError, Unit};
use anyhow::Context;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What to run.
pub struct AgentsPlan {
    pub data_dir: PathBuf,
    pub hosts: u32,
    pub net: Option<HostNetwork>,
    pub controller_url: String,
    /// How agents not yet enrolled get their join token.
    pub enrol: Enrolment,
    pub accel: Option<String>,
    /// Shared storage directory every agent keeps instance disks in.
    pub shared_storage: Option<PathBuf>,
    /// Seconds between usage samples.
    pub metering_interval_secs: u64,
}

/// Where `nimbus up` gets join tokens for its own hosts: from its controller's API, with
/// the admin token, as an operator would.
#[derive(Clone)]
pub struct Enrolment {
    pub api: String,
    pub admin_token_file: PathBuf,
    pub ca_pem: String,
}

impl Enrolment {
    /// A join token for one host (the API may not answer yet: the caller retries).
    async fn join_token(&self) -> anyhow::Result<String> {
        let token = std::fs::read_to_string(&self.admin_token_file)
            .with_context(|| format!("cannot read {}", self.admin_token_file.display()))?;
        let client = nimbus_client::Client::new(&self.api, Some(token.trim().to_string()))
            .with_root_ca(self.ca_pem.as_bytes())?;
        Ok(client.create_join_token(600).await?.token)
    }
}

/// Supervises the agents until stopped.
pub struct Supervisor {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// The first agent API port on loopback (without namespaces): host i listens on base + i.
const LOOPBACK_BASE_PORT: u16 = 7710;
const AGENT_PORT: u16 = 7701;

impl Supervisor {
    pub fn start(plan: AgentsPlan) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot find the nimbus executable")?;
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        for i in 1..=plan.hosts {
            let name = format!("host{i}");
            let state_dir = plan.data_dir.join("hosts").join(&name);
            std::fs::create_dir_all(&state_dir)
                .with_context(|| format!("cannot create {}", state_dir.display()))?;
            let (listen, netns) = match &plan.net {
                Some(n) => {
                    let h = &n.hosts[(i - 1) as usize];
                    (format!("{}:{AGENT_PORT}", h.ip), Some(h.netns.clone()))
                }
                None => (format!("127.0.0.1:{}", LOOPBACK_BASE_PORT + i as u16), None),
            };
            let mut args: Vec<String> = Vec::new();
            if let Some(ns) = &netns {
                args.extend(["netns".into(), "exec".into(), ns.clone()]);
                args.push(exe.display().to_string());
            }
            args.extend([
                "agent".into(),
                "--name".into(),
                name.clone(),
                "--listen".into(),
                listen.clone(),
                "--advertise-url".into(),
                format!("https://{listen}"),
                "--controller".into(),
                plan.controller_url.clone(),
                "--state-dir".into(),
                state_dir.display().to_string(),
                "--metering-interval-secs".into(),
                plan.metering_interval_secs.to_string(),
            ]);
            if let Some(a) = &plan.accel {
                args.extend(["--accel".into(), a.clone()]);
            }
            if let Some(dir) = &plan.shared_storage {
                args.extend(["--shared-storage".into(), dir.display().to_string()]);
            }
            let program = if netns.is_some() {
                PathBuf::from("ip")
            } else {
                exe.clone()
            };
            let spec = ChildSpec {
                name,
                program,
                args,
                state_dir,
                enrol: plan.enrol.clone(),
            };
            let unit = Unit {
                kind: "agent",
                name: spec.name.clone(),
                pid_file: spec.state_dir.join("agent.pid"),
                log: spec.state_dir.join("agent.log"),
            };
            let spec = Arc::new(spec);
            let start = move || {
                let spec = Arc::clone(&spec);
                async move { start(&spec).await }
            };
            tasks.push(tokio::spawn(supervise(unit, None, start, stop_rx.clone())));
        }
        Ok(Self { stop, tasks })
    }

    /// Stops every agent (SIGTERM, then SIGKILL after 10 s). VMs keep running.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

struct ChildSpec {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    state_dir: PathBuf,
    enrol: Enrolment,
}

/// Starts host `spec`'s agent. A host not enrolled yet (its first start) gets a join token
/// first; later starts reuse the certificate of its state dir.
async fn start(spec: &ChildSpec) -> Result<tokio::process::Child, StartError> {
    let join = if nimbus_pki::HostCredentials::new(&spec.state_dir).enrolled() {
        None
    } else {
        Some(spec.enrol.join_token().await.map_err(StartError::NotYet)?)
    };
    spawn(spec, join.as_deref()).map_err(StartError::Failed)
}

fn spawn(spec: &ChildSpec, join: Option<&str>) -> anyhow::Result<tokio::process::Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(spec.state_dir.join("agent.log"))?;
    let mut cmd = child_command(&spec.program);
    // The join token goes through the environment, not the command line others can read.
    match join {
        Some(t) => cmd.env("NIMBUS_JOIN_TOKEN", t),
        None => cmd.env_remove("NIMBUS_JOIN_TOKEN"),
    };
    let child = cmd
        .args(&spec.args)
        // `nimbus up --shared-storage` alone decides where the agents keep disks.
        .env_remove("NIMBUS_SHARED_STORAGE")
        // `ip netns exec` gives the agent a sysfs without cgroups: it finds them here.
        .env(
            "NIMBUS_CGROUP_ROOT",
            format!("/proc/{}/root/sys/fs/cgroup", std::process::id()),
        )
        // ... and makes its gateways' named namespaces in the machine's mount namespace.
        .env(
            nimbus_agent::network::NETNS_MOUNTS_ENV,
            format!("/proc/{}/ns/mnt", std::process::id()),
        )
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot run {}", spec.program.display()))?;
    Ok(child)
}
