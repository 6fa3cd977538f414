//! A running all-in-one cloud for tests.

use anyhow::{bail, Context};
use nimbus_client::Client;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// How to start the cloud.
#[derive(Debug, Clone)]
pub struct CloudOptions {
    pub hosts: u32,
    /// Extra arguments for `nimbus up`.
    pub extra_args: Vec<String>,
}

impl Default for CloudOptions {
    fn default() -> Self {
        Self {
            hosts: 2,
            extra_args: Vec::new(),
        }
    }
}

/// A cloud run by `nimbus up` for one test.
pub struct Cloud {
    bin: PathBuf,
    dir: tempfile::TempDir,
    opts: CloudOptions,
    net_name: String,
    net_index: u8,
    /// Holds the subnet claimed for this cloud until it is dropped (after its clean-up).
    _net_claim: crate::netname::NetName,
    port: u16,
    netns: bool,
    up: Option<Child>,
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

impl Cloud {
    /// Starts `nimbus up` (binary `bin`) and waits until all hosts registered.
    pub async fn start(bin: &Path, opts: CloudOptions) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("nimbus-e2e-").tempdir()?;
        let netns = nix::unistd::geteuid().is_root();
        let net = crate::netname::NetName::new(netns)?;
        let mut cloud = Self {
            bin: bin.to_path_buf(),
            dir,
            opts,
            net_name: net.name.clone(),
            net_index: net.index,
            _net_claim: net,
            port: free_port()?,
            netns,
            up: None,
        };
        cloud.launch()?;
        cloud.wait_for_hosts().await?;
        Ok(cloud)
    }

    fn launch(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("up.log"))?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("up")
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--hosts")
            .arg(self.opts.hosts.to_string())
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--net-name")
            .arg(&self.net_name)
            .arg("--net-index")
            .arg(self.net_index.to_string())
            .args(&self.opts.extra_args)
            .env("NIMBUS_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if !self.netns {
            cmd.arg("--no-netns");
        }
        self.up = Some(cmd.spawn().context("cannot run nimbus up")?);
        Ok(())
    }

    async fn wait_for_hosts(&mut self) -> anyhow::Result<()> {
        let want = self.opts.hosts as usize;
        let deadline = std::time::Instant::now() + Duration::from_secs(180);
        loop {
            if let Some(child) = self.up.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    bail!(
                        "nimbus up exited ({status}); its log:\n{}",
                        self.log_tail(40)
                    );
                }
            }
            if let Ok(client) = self.client() {
                if let Ok(hosts) = client.list_hosts().await {
                    let up = hosts
                        .iter()
                        .filter(|h| h.state == nimbus_api::HostState::Up)
                        .count();
                    if up >= want {
                        return Ok(());
                    }
                }
            }
            if std::time::Instant::now() > deadline {
                bail!(
                    "hosts did not register within 180 s; nimbus up log:\n{}",
                    self.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn api(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The cloud's CA certificate file (the API's certificate is checked against it).
    pub fn ca_cert(&self) -> PathBuf {
        self.data_dir().join("ca.crt")
    }

    /// A client of the API with `token` (or none), trusting the cloud's CA.
    pub fn client_with(&self, token: Option<String>) -> anyhow::Result<Client> {
        let ca = std::fs::read(self.ca_cert())?;
        Ok(Client::new(&self.api(), token).with_root_ca(&ca)?)
    }

    /// A raw HTTP client trusting the cloud's CA (for requests the typed client cannot make).
    pub fn http(&self) -> anyhow::Result<reqwest::Client> {
        let ca = reqwest::Certificate::from_pem(&std::fs::read(self.ca_cert())?)?;
        Ok(reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .build()?)
    }

    /// The admin token.
    pub fn token(&self) -> anyhow::Result<String> {
        let t = std::fs::read_to_string(self.data_dir().join("admin.token"))?;
        Ok(t.trim().to_string())
    }

    /// An admin client.
    pub fn client(&self) -> anyhow::Result<Client> {
        self.client_with(Some(self.token()?))
    }

    /// Runs the CLI against this cloud with the admin token.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<Output> {
        self.cli_as(&self.token()?, args)
    }

    /// Runs the CLI against this cloud with `token`.
    pub fn cli_as(&self, token: &str, args: &[&str]) -> anyhow::Result<Output> {
        Ok(Command::new(&self.bin)
            .args(args)
            .env("NIMBUS_API", self.api())
            .env("NIMBUS_CA_CERT", self.ca_cert())
            .env("NIMBUS_TOKEN", token)
            .env_remove("NIMBUS_PROJECT")
            .stdin(Stdio::null())
            .output()?)
    }

    /// A client with `token`.
    pub fn client_as(&self, token: &str) -> Client {
        self.client_with(Some(token.to_string()))
            .expect("the cloud's CA certificate is readable")
    }

    /// The last lines of the `nimbus up` log (for failure messages).
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("up.log")).unwrap_or_default();
        let v: Vec<&str> = text.lines().collect();
        v[v.len().saturating_sub(lines)..].join("\n")
    }

    /// The network namespace of host `i` (1-based), when the cloud runs one per host.
    pub fn host_netns(&self, i: usize) -> Option<String> {
        self.netns.then(|| format!("{}-host{i}", self.net_name))
    }

    /// The root namespace's address on the hosts' network (where the controller listens, the
    /// machine's "outside" for guests), and host `i`'s (1-based) address there.
    pub fn underlay(&self, i: usize) -> (std::net::Ipv4Addr, std::net::Ipv4Addr) {
        let net = |last: usize| std::net::Ipv4Addr::new(10, 249, self.net_index, last as u8);
        (net(1), net(10 + i))
    }

    /// State directory of a host's agent.
    pub fn host_dir(&self, host: &str) -> PathBuf {
        self.data_dir().join("hosts").join(host)
    }

    /// Cuts the network between hosts `a` and `b` (both keep reaching the controller) until
    /// the returned guard is dropped. Needs the hosts' namespaces (root).
    pub fn cut_link(&self, a: &str, b: &str) -> anyhow::Result<crate::LinkFault> {
        let (netns, peer) = self.link(a, b)?;
        crate::LinkFault::cut(&netns, peer)
    }

    /// Cuts the network between `host` and the controller (the host keeps reaching the
    /// other hosts, its processes run on) until the returned guard is dropped.
    pub fn cut_controller(&self, host: &str) -> anyhow::Result<crate::LinkFault> {
        let (netns, _) = self.link(host, host)?;
        let controller = std::net::Ipv4Addr::new(10, 249, self.net_index, 1);
        crate::LinkFault::cut(&netns, controller)
    }

    /// Limits the traffic between hosts `a` and `b` to `mbytes_per_s` each way (excess
    /// dropped) until the returned guard is dropped.
    pub fn throttle_link(
        &self,
        a: &str,
        b: &str,
        mbytes_per_s: u32,
    ) -> anyhow::Result<crate::LinkFault> {
        let (netns, peer) = self.link(a, b)?;
        crate::LinkFault::throttle(&netns, peer, mbytes_per_s)
    }

    /// `a`'s namespace and `b`'s address.
    fn link(&self, a: &str, b: &str) -> anyhow::Result<(String, std::net::Ipv4Addr)> {
        if !self.netns {
            bail!("link faults need the hosts' network namespaces (run as root)");
        }
        let index = |h: &str| -> anyhow::Result<u8> {
            h.strip_prefix("host")
                .and_then(|i| i.parse().ok())
                .with_context(|| format!("{h} is not a host of this cloud"))
        };
        index(a)?;
        let peer = std::net::Ipv4Addr::new(10, 249, self.net_index, 10 + index(b)?);
        Ok((format!("{}-{a}", self.net_name), peer))
    }

    /// Pid of the `nimbus up` process (controller 1 runs in it), while it runs.
    pub fn up_pid(&self) -> Option<i32> {
        self.up.as_ref().map(|c| c.id() as i32)
    }

    /// Pid of a host's agent process.
    pub fn agent_pid(&self, host: &str) -> anyhow::Result<i32> {
        let text = std::fs::read_to_string(self.host_dir(host).join("agent.pid"))?;
        Ok(text.trim().parse()?)
    }

    /// Pids of the live QEMU processes of this cloud, from their pid files.
    pub fn qemu_pids(&self) -> Vec<(PathBuf, i32)> {
        let mut out = Vec::new();
        let Ok(hosts) = std::fs::read_dir(self.data_dir().join("hosts")) else {
            return out;
        };
        for host in hosts.flatten() {
            let Ok(vms) = std::fs::read_dir(host.path().join("vms")) else {
                continue;
            };
            for vm in vms.flatten() {
                let pidfile = vm.path().join("qemu.pid");
                let Ok(text) = std::fs::read_to_string(&pidfile) else {
                    continue;
                };
                let Ok(pid) = text.trim().parse::<i32>() else {
                    continue;
                };
                if is_qemu(pid, &vm.path()) {
                    out.push((vm.path(), pid));
                }
            }
        }
        out
    }

    /// Kills a whole host: every QEMU of its state directory by pid, and its agent frozen
    /// (SIGSTOP: a killed agent would be revived by `nimbus up`'s supervisor, a frozen one is
    /// silent like a dead machine). Answers the agent's pid (SIGCONT revives the host).
    pub fn kill_host(&self, host: &str) -> anyhow::Result<i32> {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        let agent = self.agent_pid(host)?;
        kill(Pid::from_raw(agent), Signal::SIGSTOP)?;
        let vms = self.host_dir(host).join("vms");
        for (dir, pid) in self.qemu_pids() {
            if dir.starts_with(&vms) {
                kill(Pid::from_raw(pid), Signal::SIGKILL)?;
            }
        }
        Ok(agent)
    }

    /// How many live QEMU processes this cloud runs for the instance `id` (on any host).
    pub fn qemu_count(&self, id: &str) -> usize {
        self.qemu_pids()
            .iter()
            .filter(|(d, _)| d.ends_with(id))
            .count()
    }

    /// Kills `nimbus up` hard (controller and, through their parent-death signal, agents),
    /// as a crash would. VMs keep running.
    pub fn kill_up(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.up.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Starts `nimbus up` again on the same data directory.
    pub async fn restart_up(&mut self) -> anyhow::Result<()> {
        self.kill_up()?;
        // Let the agents of the killed run exit and release their ports.
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.launch()?;
        self.wait_for_hosts().await
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.up.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            for _ in 0..100 {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        for (_, pid) in self.qemu_pids() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        if self.netns {
            for i in 1..=self.opts.hosts {
                let host = format!("{}-host{i}", self.net_name);
                crate::remove_routers(&host);
                let _ = Command::new("ip").args(["netns", "del", &host]).output();
            }
            let _ = Command::new("ip")
                .args(["link", "del", &format!("{}-br", self.net_name)])
                .output();
        }
    }
}

/// The process is a QEMU started for the VM directory `dir`.
fn is_qemu(pid: i32, dir: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let text = String::from_utf8_lossy(&cmdline);
    text.contains("qemu-system") && text.contains(&*dir.to_string_lossy())
}

impl Drop for Cloud {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            match crate::logs::keep(self.dir.path()) {
                Ok(kept) => eprintln!(
                    "the failed test's cloud logs are kept in {}",
                    kept.display()
                ),
                Err(e) => eprintln!("cannot keep the failed test's cloud logs: {e}"),
            }
        }
        if std::env::var_os("NIMBUS_KEEP_TEST_DIR").is_some() {
            let path = self.dir.path().to_path_buf();
            eprintln!("keeping {}", path.display());
            std::mem::forget(std::mem::replace(
                &mut self.dir,
                tempfile::TempDir::new().expect("tempdir"),
            ));
        }
    }
}
