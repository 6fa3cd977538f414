//! The extra controllers of `nimbus up --controllers N`: controller 1 runs in the `nimbus
//! up` process; controllers 2..N are `nimbus controller` child processes over the same
//! PostgreSQL database and data directory (tokens, CA), listening on the next ports. Each
//! writes its pid to `<data dir>/controllers/ctlN/controller.pid` and its log beside it, so
//! one can be killed to watch the others take its work over, and keeps its own copies of
//! image bytes there (`ctlN/images/`), as on separate machines. A controller that dies is
//! restarted, as the agents are (systemd would on a real machine), with the same bounded
//! back-off and a log line; meanwhile the others carry on with its work (that is the point of
//! running several), and the restarted process joins them with a new identity.

use super::supervise::{child_command, supervise, StartError, Unit};
use anyhow::{bail, Context};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Most controllers `nimbus up` runs (their ports must stay below the agents' loopback ports).
pub const MAX_CONTROLLERS: u32 = 5;

/// What every extra controller is started with.
#[derive(Clone)]
pub struct ControllersPlan {
    pub data_dir: PathBuf,
    pub database_url: String,
    /// Listen addresses of controller 1; controller i listens on the same addresses with the
    /// port plus i - 1.
    pub listen: Vec<SocketAddr>,
    pub tls_names: Vec<String>,
    /// Instances get NICs on the cloud network (host networking available).
    pub network: bool,
    pub floating_ip_pool: Option<String>,
    pub cpu_ratio: f64,
    pub ram_ratio: f64,
    pub disk_ratio: f64,
    pub strategy: &'static str,
    pub lease_ttl: Duration,
    pub boot_timeout_secs: u64,
}

/// Checks `--controllers` against the database before anything starts.
pub fn check(controllers: u32, database_url: Option<&str>) -> anyhow::Result<()> {
    if controllers == 0 || controllers > MAX_CONTROLLERS {
        bail!("--controllers must be between 1 and {MAX_CONTROLLERS}");
    }
    let postgres = database_url
        .is_some_and(|u| u.starts_with("postgres://") || u.starts_with("postgresql://"));
    if controllers > 1 && !postgres {
        bail!(
            "--controllers {controllers} needs one PostgreSQL database shared by all controllers: \
             add --database-url postgres://USER:PASSWORD@HOST/DATABASE (SQLite serves one \
             controller; see docs/control-plane.md)"
        );
    }
    Ok(())
}

/// The addresses of controller `i` (1-based) given controller 1's.
pub fn listen_of(first: &[SocketAddr], i: u32) -> Vec<SocketAddr> {
    first
        .iter()
        .map(|a| SocketAddr::new(a.ip(), a.port() + (i - 1) as u16))
        .collect()
}

/// The extra controllers, supervised until stopped.
pub struct ExtraControllers {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl ExtraControllers {
    /// Starts controllers 2..=`count`, each restarted when it dies.
    pub fn start(plan: &ControllersPlan, count: u32) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot find the nimbus executable")?;
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        for i in 2..=count {
            let dir = dir_of(&plan.data_dir, i);
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let child = spawn(&exe, plan, i, &dir)?;
            let unit = Unit {
                kind: "controller",
                name: format!("ctl{i}"),
                pid_file: dir.join("controller.pid"),
                log: dir.join("controller.log"),
            };
            let (exe, plan) = (exe.clone(), plan.clone());
            let start = move || {
                let started = spawn(&exe, &plan, i, &dir).map_err(StartError::Failed);
                std::future::ready(started)
            };
            tasks.push(tokio::spawn(supervise(
                unit,
                Some(child),
                start,
                stop_rx.clone(),
            )));
        }
        Ok(Self { stop, tasks })
    }

    /// Stops every extra controller still running (SIGTERM, then SIGKILL after 10 s).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Where controller `i` keeps its pid and log.
pub fn dir_of(data_dir: &Path, i: u32) -> PathBuf {
    data_dir.join("controllers").join(format!("ctl{i}"))
}

fn spawn(
    exe: &Path,
    plan: &ControllersPlan,
    i: u32,
    dir: &Path,
) -> anyhow::Result<tokio::process::Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("controller.log"))?;
    let mut args: Vec<String> = vec![
        "controller".into(),
        "--data-dir".into(),
        plan.data_dir.display().to_string(),
        "--cpu-ratio".into(),
        plan.cpu_ratio.to_string(),
        "--ram-ratio".into(),
        plan.ram_ratio.to_string(),
        "--disk-ratio".into(),
        plan.disk_ratio.to_string(),
        "--strategy".into(),
        plan.strategy.into(),
        "--lease-ttl".into(),
        format!("{}s", plan.lease_ttl.as_secs().max(1)),
        "--boot-timeout-secs".into(),
        plan.boot_timeout_secs.to_string(),
        // Its own copies of image bytes: each controller holds every image, as on
        // separate machines (the data dir is shared here for the tokens and the CA).
        "--blob-dir".into(),
        dir.display().to_string(),
        "--network".into(),
        if plan.network {
            "10.200.0.0/16".into()
        } else {
            "none".into()
        },
    ];
    let listen = listen_of(&plan.listen, i);
    if let Some(first) = listen.first() {
        let peer = super::loopback_of(*first);
        args.extend(["--advertise-url".into(), format!("https://{peer}")]);
    }
    for addr in listen {
        args.extend(["--listen".into(), addr.to_string()]);
    }
    for name in &plan.tls_names {
        args.extend(["--tls-name".into(), name.clone()]);
    }
    if let Some(pool) = &plan.floating_ip_pool {
        args.extend(["--floating-ip-pool".into(), pool.clone()]);
    }
    child_command(exe)
        .args(&args)
        // The database URL may carry a password: through the environment, not the command
        // line others can read.
        .env("NIMBUS_DATABASE_URL", &plan.database_url)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot run controller {i} ({})", exe.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_controllers_need_postgresql() {
        let e = check(3, None).expect_err("sqlite").to_string();
        assert!(e.contains("--database-url postgres://"), "{e}");
        let e = check(2, Some("sqlite:///tmp/x.db"))
            .expect_err("sqlite")
            .to_string();
        assert!(e.contains("SQLite serves one controller"), "{e}");
        check(3, Some("postgres://u:p@db/nimbus")).expect("postgres");
        check(1, None).expect("one controller on SQLite");
        assert!(check(0, None).is_err());
        assert!(check(MAX_CONTROLLERS + 1, Some("postgres://db/n")).is_err());
    }

    #[test]
    fn controllers_listen_on_the_next_ports() {
        let first: Vec<SocketAddr> = vec![
            "127.0.0.1:7700".parse().expect("addr"),
            "10.249.0.1:7700".parse().expect("addr"),
        ];
        let third = listen_of(&first, 3);
        assert_eq!(third[0].to_string(), "127.0.0.1:7702");
        assert_eq!(third[1].to_string(), "10.249.0.1:7702");
    }
}
