//! `nimbus controller` and `nimbus agent`: the parts of the cloud, run separately.

use crate::args::{AgentArgs, ControllerArgs, OnOff, StrategyArg};
use crate::context::default_data_dir;
use anyhow::{bail, Context};
use nimbus_agent::metering::MeteringConfig;
use nimbus_agent::overcommit::{KsmConfig, Overcommit};
use nimbus_agent::{Accelerator, AgentConfig, HostTlsFiles, MigrationTls};
use nimbus_controller::{ControllerConfig, Retention};
use nimbus_scheduler::{AllocationRatios, Strategy};
use std::time::Duration;

/// SIGINT and SIGTERM, caught from the moment [`ShutdownSignal::install`] runs (a signal
/// that arrives earlier would kill the process without cleanup).
pub struct ShutdownSignal {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl ShutdownSignal {
    pub fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("cannot catch SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot catch SIGINT")?,
        })
    }

    /// Resolves at the first SIGINT or SIGTERM.
    pub async fn recv(mut self) {
        tokio::select! {
            _ = self.term.recv() => {},
            _ = self.int.recv() => {},
        }
    }
}

pub fn strategy(s: StrategyArg) -> Strategy {
    match s {
        StrategyArg::Spread => Strategy::Spread,
        StrategyArg::Pack => Strategy::Pack,
    }
}

pub fn parse_accel(s: Option<&str>) -> anyhow::Result<Option<Accelerator>> {
    Ok(match s {
        None | Some("") | Some("auto") => None,
        Some("kvm") => Some(Accelerator::Kvm),
        Some("tcg") => Some(Accelerator::Tcg),
        Some(other) => bail!("unknown accelerator {other:?}: use kvm, tcg or auto"),
    })
}

pub async fn controller(args: ControllerArgs) -> anyhow::Result<()> {
    let retention = retention(&args);
    let data_dir = args.data_dir.unwrap_or_else(default_data_dir);
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let mut config = ControllerConfig::new(data_dir.clone());
    config.retention = retention;
    config.listen = args.listen;
    config.trusted_proxies = args.trusted_proxy;
    config.tls_names = args.tls_names;
    config.lease_ttl = args.lease_ttl;
    config.blob_dir = args.blob_dir;
    config.advertise_url = args.advertise_url;
    config.boot_timeout = Duration::from_secs(args.boot_timeout_secs);
    if let Some(url) = args.database_url {
        config.database_url = url;
    }
    config.ratios = AllocationRatios {
        cpu: args.cpu_ratio,
        ram: args.ram_ratio,
        disk: args.disk_ratio,
    };
    config.strategy = strategy(args.strategy);
    config.network = parse_network(&args.network)?;
    config.floating_ip_pool = args.floating_ip_pool;
    nimbus_controller::run(config, ShutdownSignal::install()?.recv()).await
}

fn retention(args: &ControllerArgs) -> Retention {
    const HOUR: u64 = 3600;
    let time = |n: u64, unit: u64| Duration::from_secs(n.saturating_mul(unit));
    Retention {
        usage_raw: time(args.usage_retention_hours, HOUR),
        operations: time(args.operation_retention_days, 24 * HOUR),
        audit: time(args.audit_retention_days, 24 * HOUR),
        ..Retention::default()
    }
}

pub async fn agent(args: AgentArgs) -> anyhow::Result<()> {
    if args.fake_vms {
        nimbus_agent::fake_vms::enable().map_err(anyhow::Error::msg)?;
    }
    let advertise_url = match args.advertise_url {
        Some(url) => url,
        None if args.listen.ip().is_unspecified() => {
            anyhow::bail!(
                "the agent listens on {} (every address): the controller cannot reach it there; \
                 set --advertise-url to the URL it can (e.g. https://10.0.0.3:{})",
                args.listen,
                args.listen.port()
            )
        }
        None => format!("https://{}", args.listen),
    };
    // Enrolment goes to the first controller of the list; any of them accepts the cert.
    let controllers = nimbus_agent::controllers::ControllerUrls::parse(&args.controller);
    let Some(first_controller) = controllers.first() else {
        bail!("--controller is empty: give the controller's URL, e.g. https://ctl:7700");
    };
    let trust = super::host_trust::load(
        &args.state_dir,
        &args.name,
        first_controller,
        &advertise_url,
        args.join.as_deref(),
    )
    .await?;
    let host_files = HostTlsFiles::load(&args.state_dir, &args.name)?;
    let migration_tls = if args.insecure_migration {
        tracing::warn!("--insecure-migration: incoming migrations and disk mirrors are served in plain TCP (guest memory and disks readable and writable on the underlay)");
        MigrationTls::insecure(Some(host_files))
    } else {
        MigrationTls::required(host_files)
    };
    let config = AgentConfig {
        name: args.name,
        listen: args.listen,
        advertise_url,
        controller_tls: Some(trust.client),
        controller_url: Some(args.controller),
        token: None,
        tls: Some(trust.server),
        state_dir: args.state_dir,
        shared_storage: args.shared_storage,
        accelerator: parse_accel(args.accel.as_deref())?,
        probe_image: nimbus_agent::default_probe_image(),
        probe_cache: None,
        overcommit: Overcommit {
            cpu_allocation_ratio: args.cpu_allocation_ratio,
            ram_allocation_ratio: args.ram_allocation_ratio,
            ksm: KsmConfig {
                manage: args.ksm == OnOff::On,
                pages_to_scan: args.ksm_pages_to_scan,
                sleep_millisecs: args.ksm_sleep_ms,
            },
        },
        metering: MeteringConfig {
            interval: std::time::Duration::from_secs(args.metering_interval_secs),
        },
        image_cache_gib: args.image_cache_gib,
        migration_tls,
    };
    nimbus_agent::run(config, ShutdownSignal::install()?.recv()).await
}

/// `10.200.0.0/16` -> network settings; `none` -> no network.
pub fn parse_network(
    s: &str,
) -> anyhow::Result<Option<nimbus_controller::config::NetworkSettings>> {
    if s == "none" {
        return Ok(None);
    }
    let (addr, len) = s
        .split_once('/')
        .ok_or_else(|| anyhow::anyhow!("network {s:?} must look like 10.200.0.0/16"))?;
    let address: std::net::Ipv4Addr = addr
        .parse()
        .with_context(|| format!("bad address in {s:?}"))?;
    let prefix_len: u8 = len
        .parse()
        .with_context(|| format!("bad prefix length in {s:?}"))?;
    if !(8..=28).contains(&prefix_len) {
        bail!("the network prefix length must be between 8 and 28");
    }
    Ok(Some(nimbus_controller::config::NetworkSettings {
        address,
        prefix_len,
        ..Default::default()
    }))
}
