//! The nimbus host agent: runs the VMs of one host and serves the agent API
//! ([`nimbus_agent_api`]) to the controller.
//!
//! - [`agent`]: start-up (QEMU version, accelerator probe, re-adoption) and host facts.
//! - [`accel`]: the accelerator choice and the cached probe answer.
//! - [`manager`]: the VMs by id; define and delete.
//! - [`storage`]: where instance disks live (the VM directory, or shared storage).
//! - [`instance`]: one actor task per VM (state machine in its module doc).
//! - [`http`]: the routes, auth and JSON errors.
//! - [`register`]: periodic registration with the controller.
//! - [`migration`]: live migration, both ends (target: incoming; source: outgoing, policy).
//! - [`network`]: host networking (bridge, VXLAN to the other hosts, the VMs' taps).
//! - [`metering`]: per-VM usage samples pushed to the controller.
//! - [`overcommit`]: the host's allocation ratios and KSM.
//! - [`fake_vms`]: the control-plane benchmark's stand-in for QEMU (`--fake-vms`).
//!
//! QEMU processes outlive the agent: stopping the agent leaves them running, and the next
//! agent on the same state directory adopts them.

pub mod accel;
pub mod agent;
pub mod confine;
pub mod controller_link;
pub mod controllers;
pub mod enrol;
pub mod error;
pub mod fake_vms;
pub mod fence;
pub mod host;
pub mod http;
pub mod image;
pub mod image_cache;
pub mod instance;
pub mod manager;
pub mod metering;
pub mod migration;
pub mod network;
pub mod overcommit;
pub mod register;
pub mod snapshot;
pub mod storage;

pub use agent::Agent;
pub use error::Error;
pub use http::router;
pub use image::{default_probe_image, ImageManifest};
pub use migration::tls::{HostTlsFiles, MigrationTls};
pub use nimbus_agent_api::Accelerator;

use anyhow::Context;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;

/// How to run an agent.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Host name, unique in the cloud.
    pub name: String,
    /// Address the API listens on.
    pub listen: SocketAddr,
    /// URL the controller reaches this agent at (sent when registering).
    pub advertise_url: String,
    /// Controller to register with; `None` runs standalone.
    pub controller_url: Option<String>,
    /// TLS of the calls to the controller (its CA; the host's certificate); `None` only for
    /// in-process tests against a plain-HTTP controller.
    pub controller_tls: Option<nimbus_pki::rustls::ClientConfig>,
    /// Bearer token of the agent API when it is served without TLS (in-process tests; also
    /// presented to such a controller). `None` with [`AgentConfig::tls`].
    pub token: Option<String>,
    /// TLS of the agent API: the host's certificate, and only the controller's certificate
    /// accepted from clients (mutual TLS; see docs/security.md). `None`: plain HTTP with
    /// [`AgentConfig::token`], for in-process tests only (the `nimbus agent` command always
    /// serves TLS).
    pub tls: Option<std::sync::Arc<nimbus_pki::rustls::ServerConfig>>,
    /// Where VM directories live (`<state_dir>/vms/<id>/`).
    pub state_dir: PathBuf,
    /// Directory of shared storage (e.g. an NFS mount at the same path on every host) for
    /// instance disks (`<dir>/<id>/disk.qcow2`); it must exist and be writable. `None`:
    /// disks stay in the VM directories.
    pub shared_storage: Option<PathBuf>,
    /// Forces the accelerator (skips the probe); `NIMBUS_ACCEL` does the same.
    pub accelerator: Option<Accelerator>,
    /// Kernel, initrd and command line the accelerator probe boots (see
    /// [`default_probe_image`]); without it the probe only runs the firmware.
    pub probe_image: Option<(PathBuf, PathBuf, String)>,
    /// Where the probe's answer is cached; `None`: the host-wide cache (see [`accel`]).
    pub probe_cache: Option<PathBuf>,
    /// Allocation ratios this host reports and KSM.
    pub overcommit: overcommit::Overcommit,
    /// How usage is sampled.
    pub metering: metering::MeteringConfig,
    /// Bound of the cache of uploaded images, in GiB (least recently used images not in use
    /// are evicted beyond it).
    pub image_cache_gib: u64,
    /// How live migrations are secured: TLS with the host's certificate (`nimbus agent`),
    /// or plain TCP (`--insecure-migration`, in-process tests).
    pub migration_tls: MigrationTls,
}

impl AgentConfig {
    /// An agent for in-process tests: the API on `listen` in plain HTTP with the bearer
    /// `token`, no controller, TCG forced (no probe), the host's overcommit untouched, default
    /// metering, a 20 GiB image cache and plain TCP migrations. Tests change what they need
    /// with struct update syntax (`AgentConfig { controller_url, ..AgentConfig::in_process(..) }`).
    pub fn in_process(name: &str, listen: SocketAddr, state_dir: PathBuf, token: &str) -> Self {
        Self {
            name: name.into(),
            listen,
            advertise_url: format!("http://{listen}"),
            controller_url: None,
            controller_tls: None,
            token: Some(token.into()),
            tls: None,
            state_dir,
            shared_storage: None,
            accelerator: Some(Accelerator::Tcg),
            probe_image: None,
            probe_cache: None,
            overcommit: overcommit::Overcommit::untouched(),
            metering: metering::MeteringConfig::default(),
            image_cache_gib: 20,
            migration_tls: MigrationTls::insecure(None),
        }
    }
}

/// Runs the agent until `shutdown` completes. The VMs keep running afterwards.
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // Bind first: an agent that cannot serve must not touch the VMs.
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    // A stop asked for during start-up (the accelerator probe may take its whole timeout)
    // ends the start at once: the port is free for the next agent, and no VM is touched.
    let shutdown = futures::FutureExt::shared(Box::pin(shutdown));
    let agent = tokio::select! {
        agent = Agent::start(&config) => agent?,
        () = shutdown.clone() => {
            tracing::info!("stopped during start-up");
            return Ok(());
        }
    };
    confine::sweep();
    tracing::info!(listen = %config.listen, advertise = config.advertise_url, "agent API listening");
    let mut background = vec![tokio::spawn(confine::console::run(
        agent.state_dir().join("vms"),
    ))];
    if let Some(list) = config.controller_url.as_deref() {
        let controllers = std::sync::Arc::new(controllers::ControllerUrls::parse(list));
        let contact = std::sync::Arc::new(fence::Contact::load(agent.state_dir()));
        background.push(tokio::spawn(register::register_loop(
            agent.clone(),
            controllers.clone(),
            contact.clone(),
        )));
        background.push(tokio::spawn(fence::fence_loop(agent.clone(), contact)));
        let outbox = std::sync::Arc::new(metering::outbox::Outbox::load(
            agent.state_dir().join("usage-outbox.json"),
        ));
        background.push(tokio::spawn(metering::run(
            agent.clone(),
            outbox.clone(),
            config.metering.clone(),
        )));
        background.push(tokio::spawn(metering::outbox::push_loop(
            outbox,
            controllers,
            config.controller_tls.clone(),
            config.name.clone(),
            config.token.clone(),
            config.metering.interval,
        )));
    }
    let served = match config.tls.clone() {
        Some(tls) => {
            let only_controller = Some(nimbus_pki::Role::Controller);
            let listener = nimbus_pki::TlsListener::new(listener, tls, only_controller)
                .context("cannot serve TLS")?;
            axum::serve(listener, router(agent.clone()))
                .with_graceful_shutdown(shutdown)
                .await
        }
        None => {
            axum::serve(listener, router(agent.clone()))
                .with_graceful_shutdown(shutdown)
                .await
        }
    };
    for task in background {
        task.abort();
    }
    agent.shutdown().await;
    served.context("agent API server failed")
}

/// Fixtures shared by the unit tests of several modules.
#[cfg(test)]
pub(crate) mod test_support {
    use nimbus_agent_api::{NicSpec, VmSpec};
    use uuid::Uuid;

    /// `len` bytes that do not compress nor repeat (xorshift from `seed`).
    pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.max(1);
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// A VM spec with no kernel, base disk or ready marker: enough for code that never boots.
    pub fn blank_spec(id: Uuid, nics: Vec<NicSpec>) -> VmSpec {
        VmSpec {
            nics,
            ..nimbus_test_utils::specs::blank_vm_spec(id, "vm")
        }
    }
}
