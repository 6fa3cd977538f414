//! `nimbus up`: an all-in-one cloud on this machine.
//!
//! The controller runs in this process; each host agent runs as a child process, in a
//! network namespace of its own when run as root (so every "host" has its own address, as on
//! a real network), supervised and restarted if it dies. QEMU processes outlive the agents:
//! stopping `nimbus up` leaves the VMs running, and the next `nimbus up` re-adopts them.
//! With `--shared-storage` every agent keeps its instance disks in `<data dir>/shared`: the
//! hosts of one machine see one filesystem, as hosts with an NFS mount at the same path do.

mod agents;
mod controllers;
mod image;
mod network;
mod supervise;

use crate::args::UpArgs;
use crate::commands::server::{strategy, ShutdownSignal};
use crate::context::{default_data_dir, local_cloud_path, LocalCloud};
use anyhow::{bail, Context};
use nimbus_controller::app::bootstrap::admin_token_path;
use nimbus_controller::ControllerConfig;
use nimbus_scheduler::AllocationRatios;
use std::net::SocketAddr;
use std::time::Duration;

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    if args.hosts == 0 || args.hosts > 32 {
        bail!("--hosts must be between 1 and 32");
    }
    if args.net_name.len() > 8 || args.net_name.is_empty() {
        bail!("--net-name must have 1 to 8 characters (it prefixes interface names)");
    }
    controllers::check(args.controllers, args.database_url.as_deref())?;
    let shutdown = ShutdownSignal::install()?;
    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
    let data_dir = std::path::absolute(&data_dir)?;
    let shared_storage = if args.shared_storage {
        let dir = data_dir.join("shared");
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create the shared storage {}", dir.display()))?;
        Some(dir)
    } else {
        None
    };
    let default_image = image::ensure_default_image(&data_dir).await?;
    // The controller would create the CA at its start; made here first, the agents and the
    // CLI can trust it from their first call.
    let ca = nimbus_pki::CloudCa::load_or_create(&data_dir)
        .with_context(|| format!("cannot set up the cloud CA in {}", data_dir.display()))?;
    let ca_cert = data_dir.join(nimbus_pki::CA_CERT_FILE);

    let use_netns = !args.no_netns && nix::unistd::geteuid().is_root();
    let net = if use_netns {
        Some(network::HostNetwork::setup(&args.net_name, args.net_index, args.hosts).await?)
    } else {
        None
    };
    let mut config = ControllerConfig::new(data_dir.clone());
    config.listen = vec![args.listen];
    config.lease_ttl = args.lease_ttl;
    // The other controllers copy image bytes from this one on this machine's loopback
    // (`--listen 0.0.0.0` names no address they could reach).
    config.advertise_url = Some(format!("https://{}", loopback_of(args.listen)));
    config.boot_timeout = std::time::Duration::from_secs(args.boot_timeout_secs);
    // Where the agents call controller 1 (the others: the next ports).
    let agents_reach = match &net {
        Some(n) => {
            let bridge_addr = SocketAddr::new(n.bridge_ip.into(), args.listen.port());
            if !args.listen.ip().is_unspecified() {
                config.listen.push(bridge_addr);
            }
            // The agents call the controller at the bridge: its certificate names it.
            config.tls_names.push(n.bridge_ip.to_string());
            bridge_addr
        }
        None => loopback_of(args.listen),
    };
    let controller_url = urls_of(agents_reach, args.controllers);
    if let Some(url) = &args.database_url {
        config.database_url = url.clone();
    }
    config.ratios = AllocationRatios {
        cpu: args.cpu_ratio,
        ram: args.ram_ratio,
        disk: args.disk_ratio,
    };
    config.strategy = strategy(args.strategy);
    config.default_image = Some(default_image);
    // Instances get NICs on the cloud network when hosts can create bridges and taps.
    if let Some(n) = &net {
        config.network = Some(nimbus_controller::config::NetworkSettings::default());
        config.floating_ip_pool = Some(n.floating_ip_pool());
    }

    let (config_listen, config_tls_names) = (config.listen.clone(), config.tls_names.clone());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut rx = stop_rx.clone();
    let controller = tokio::spawn(nimbus_controller::run(config, async move {
        let _ = rx.wait_for(|s| *s).await;
    }));
    // Controller 1 first: it makes the tokens and applies the migrations the others find.
    wait_for_api(
        &format!("https://{}", loopback_of(args.listen)),
        &ca,
        &controller,
    )
    .await;
    let extra = controllers::ExtraControllers::start(
        &controllers::ControllersPlan {
            data_dir: data_dir.clone(),
            database_url: args.database_url.clone().unwrap_or_default(),
            listen: config_listen,
            tls_names: config_tls_names,
            network: net.is_some(),
            floating_ip_pool: net.as_ref().map(|n| n.floating_ip_pool().to_string()),
            cpu_ratio: args.cpu_ratio,
            ram_ratio: args.ram_ratio,
            disk_ratio: args.disk_ratio,
            strategy: match args.strategy {
                crate::args::StrategyArg::Spread => "spread",
                crate::args::StrategyArg::Pack => "pack",
            },
            lease_ttl: args.lease_ttl,
            boot_timeout_secs: args.boot_timeout_secs,
        },
        args.controllers,
    )?;
    let api = urls_of(loopback_of(args.listen), args.controllers);
    let supervisor = agents::Supervisor::start(agents::AgentsPlan {
        data_dir: data_dir.clone(),
        hosts: args.hosts,
        net: net.clone(),
        controller_url,
        enrol: agents::Enrolment {
            api: api.clone(),
            admin_token_file: admin_token_path(&data_dir),
            ca_pem: ca.cert_pem().to_string(),
        },
        accel: args.accel.clone(),
        shared_storage: shared_storage.clone(),
        metering_interval_secs: args.metering_interval_secs,
    })?;

    let local = LocalCloud {
        api: api.clone(),
        token_file: admin_token_path(&data_dir),
        ca_cert: Some(ca_cert),
    };
    std::fs::write(
        local_cloud_path(&data_dir),
        serde_json::to_vec_pretty(&local)?,
    )?;
    announce(&api, &data_dir, &ca, args.hosts, shared_storage.as_deref()).await;

    tokio::select! {
        _ = shutdown.recv() => {}
        res = controller_done(&controller) => {
            supervisor.stop().await;
            extra.stop().await;
            return res;
        }
    }
    eprintln!("stopping nimbus (VMs keep running; the next `nimbus up` re-adopts them)");
    supervisor.stop().await;
    extra.stop().await;
    let _ = stop_tx.send(true);
    match tokio::time::timeout(Duration::from_secs(10), controller).await {
        Ok(Ok(res)) => res,
        Ok(Err(e)) => Err(anyhow::anyhow!("controller task failed: {e}")),
        Err(_) => Ok(()),
    }
}

/// Resolves when the controller task ends by itself (an error at start, e.g. a busy port).
async fn controller_done(task: &tokio::task::JoinHandle<anyhow::Result<()>>) -> anyhow::Result<()> {
    while !task.is_finished() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("the controller stopped; see the messages above")
}

/// `https://` URLs of controllers 1..=`count`, controller 1 at `first`, comma-separated (as
/// agents' `--controller` and the CLI's `--api` take them).
fn urls_of(first: SocketAddr, count: u32) -> String {
    controllers::listen_of(&[first], 1)
        .into_iter()
        .chain((2..=count).flat_map(|i| controllers::listen_of(&[first], i)))
        .map(|a| format!("https://{a}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Waits (bounded) until the API at `api` answers, or the controller stopped.
async fn wait_for_api(
    api: &str,
    ca: &nimbus_pki::CloudCa,
    controller: &tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline && !controller.is_finished() {
        if let Ok(c) = nimbus_client::Client::new(api, None).with_root_ca(ca.cert_pem().as_bytes())
        {
            if c.health().await.is_ok() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn loopback_of(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    }
}

/// Waits (bounded) for the API and the hosts, then tells the user what to do next.
async fn announce(
    api: &str,
    data_dir: &std::path::Path,
    ca: &nimbus_pki::CloudCa,
    hosts: u32,
    shared_storage: Option<&std::path::Path>,
) {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut ready = Vec::new();
    while std::time::Instant::now() < deadline {
        // The controller writes the token at its first start: read it on every try.
        let token = std::fs::read_to_string(admin_token_path(data_dir)).ok();
        let client = nimbus_client::Client::new(api, token.map(|t| t.trim().to_string()))
            .with_root_ca(ca.cert_pem().as_bytes());
        let listed = match client {
            Ok(c) => c.list_hosts().await,
            Err(e) => Err(e),
        };
        if let Ok(h) = listed {
            ready = h;
            if ready.len() as u32 >= hosts {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    eprintln!("nimbus is up");
    let first = api.split(',').next().unwrap_or(api);
    eprintln!("  API:         {api}   (OpenAPI: {first}/v1/openapi.json)");
    eprintln!("  data:        {}", data_dir.display());
    eprintln!("  admin token: {}", admin_token_path(data_dir).display());
    eprintln!(
        "  CA:          {} (sha256 {}; other clients: --ca-cert or NIMBUS_CA_CERT)",
        data_dir.join(nimbus_pki::CA_CERT_FILE).display(),
        ca.fingerprint()
    );
    if let Some(dir) = shared_storage {
        eprintln!("  disks:       {} (shared by every host)", dir.display());
    }
    for h in &ready {
        eprintln!(
            "  host {}: {} ({} CPUs, {} MiB, {})",
            h.name, h.agent_url, h.cpus, h.memory_mib, h.accelerator
        );
    }
    if (ready.len() as u32) < hosts {
        eprintln!(
            "  warning: only {} of {hosts} hosts registered so far; see {}/hosts/*/agent.log",
            ready.len(),
            data_dir.display()
        );
    }
    eprintln!("try:  nimbus instance create web1 --flavor small --image default --wait");
    eprintln!("stop with Ctrl-C");
}
