//! Several `nimbus controller` processes over one PostgreSQL database (issue 12): started on
//! loopback ports, sharing one data directory (tokens and the cloud CA, which every
//! controller of a cloud must share), killed or paused by their pid.

use anyhow::Context;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A fresh PostgreSQL database on the server `NIMBUS_TEST_POSTGRES_URL` names (CI sets it;
/// `bash scripts/ci-postgres.sh` starts one); its URL. Dropped when the value is.
pub struct TestDatabase {
    admin_url: String,
    name: String,
    pub url: String,
}

impl TestDatabase {
    /// Fails with what to do when `NIMBUS_TEST_POSTGRES_URL` is unset.
    pub fn create() -> anyhow::Result<Self> {
        let admin_url = std::env::var("NIMBUS_TEST_POSTGRES_URL").context(
            "NIMBUS_TEST_POSTGRES_URL is unset: these tests need PostgreSQL; run \
             `bash scripts/ci-postgres.sh` and export the URL it prints",
        )?;
        let name = format!("nimbus_cp_{}_{}", std::process::id(), free_port()?);
        psql(&admin_url, &format!("CREATE DATABASE {name}"))?;
        let (base, _) = admin_url
            .rsplit_once('/')
            .context("NIMBUS_TEST_POSTGRES_URL has no database part")?;
        let url = format!("{base}/{name}");
        Ok(Self {
            admin_url,
            name,
            url,
        })
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        if let Err(e) = psql(&self.admin_url, &sql) {
            eprintln!("warning: could not drop test database {}: {e:#}", self.name);
        }
    }
}

fn psql(url: &str, sql: &str) -> anyhow::Result<()> {
    let out = Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .context("cannot run psql (scripts/install-deps.sh installs it)")?;
    anyhow::ensure!(
        out.status.success(),
        "psql {sql:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// One `nimbus controller` process; killed when dropped.
pub struct ControllerProcess {
    child: Child,
    pub api: String,
    pub log: PathBuf,
}

impl ControllerProcess {
    /// Starts `bin controller` on a free loopback port over `database_url`, with the lease
    /// TTL given and the extra environment `env` (e.g. a failpoint).
    pub fn start(
        bin: &Path,
        data_dir: &Path,
        database_url: &str,
        lease_ttl_secs: u64,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        Self::start_on(
            bin,
            data_dir,
            database_url,
            free_port()?,
            lease_ttl_secs,
            env,
        )
    }

    /// [`ControllerProcess::start`] on a given port (a restart at the same address).
    pub fn start_on(
        bin: &Path,
        data_dir: &Path,
        database_url: &str,
        port: u16,
        lease_ttl_secs: u64,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let log = data_dir.join(format!("controller-{port}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let mut cmd = Command::new(bin);
        cmd.args(["controller", "--data-dir"])
            .arg(data_dir)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--database-url", database_url, "--network", "none"])
            .args(["--lease-ttl", &lease_ttl_secs.to_string()])
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().context("cannot start nimbus controller")?;
        Ok(Self {
            child,
            api: format!("https://127.0.0.1:{port}"),
            log,
        })
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.api
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0)
    }

    /// Waits (bounded) until its API listens (it listens once registered and migrated).
    pub async fn wait_healthy(&mut self) -> anyhow::Result<()> {
        let addr = format!("127.0.0.1:{}", self.port());
        for _ in 0..150 {
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!("the controller exited ({status}): {}", self.log_text());
            }
            if tokio::net::TcpStream::connect(&addr).await.is_ok() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        anyhow::bail!("the controller did not answer in 30 s: {}", self.log_text())
    }

    /// Waits (bounded) for the process to exit; its status code.
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<Option<i32>> {
        let start = std::time::Instant::now();
        while start.elapsed() < timeout {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.code());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!("the controller is still running after {timeout:?}")
    }

    /// Sends `signal` to this process (and only it).
    pub fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        kill(Pid::from_raw(self.child.id() as i32), signal)?;
        Ok(())
    }

    /// kill -9, and reaps it.
    pub fn kill9(&mut self) -> anyhow::Result<()> {
        self.signal(Signal::SIGKILL)?;
        self.child.wait()?;
        Ok(())
    }

    /// What it logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.signal(Signal::SIGCONT);
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
