//! The agent: host facts decided at start (QEMU version, accelerator, disk storage) and the
//! VMs.

use crate::error::Result as AgentResult;
use crate::image_cache::{ImageCache, ImageSource};
use crate::manager::Manager;
use crate::network::HostNetwork;
use crate::overcommit::ksm;
use crate::storage::DiskStore;
use crate::{host, AgentConfig};
use anyhow::Context;
use nimbus_agent_api::{Accelerator, HostInventory};
use nimbus_qemu::probe;
use nimbus_qemu::Accel;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A started agent. Cheap to clone.
#[derive(Clone)]
pub struct Agent {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    token: Option<String>,
    controller_tls: Option<nimbus_pki::rustls::ClientConfig>,
    advertise_url: String,
    state_dir: PathBuf,
    store: DiskStore,
    accelerator: Accelerator,
    qemu_version: String,
    manager: Manager,
    network: Arc<HostNetwork>,
    overcommit: crate::overcommit::Overcommit,
}

impl Agent {
    /// Checks QEMU (>= 9.0) and the shared storage (if any), chooses the accelerator
    /// (override, else probe), and loads the VMs of `state_dir`, re-adopting those whose QEMU
    /// still runs.
    pub async fn start(config: &AgentConfig) -> anyhow::Result<Self> {
        let started = std::time::Instant::now();
        // Before any VM is launched or adopted: its cgroup path names this host.
        crate::confine::set_host(&config.name);
        let program = nimbus_qemu::qemu_binary();
        let qemu = probe::installed_qemu(&program).await?;
        let version = qemu.version;
        probe::check_min_version(version)?;
        std::fs::create_dir_all(&config.state_dir)
            .with_context(|| format!("cannot create {}", config.state_dir.display()))?;
        let state_dir = std::path::absolute(&config.state_dir)?;
        let store = match &config.shared_storage {
            Some(dir) => DiskStore::shared(dir)?,
            None => DiskStore::Local,
        };
        config
            .overcommit
            .validate()
            .map_err(|e| anyhow::anyhow!(e))?;
        set_up_ksm(&config.overcommit.ksm);
        let accel = crate::accel::choose(&crate::accel::AccelInputs {
            configured: config.accelerator,
            qemu: &qemu,
            program: &program,
            probe_image: config.probe_image.as_ref(),
            state_dir: &state_dir,
            cache_file: &config.probe_cache.clone().unwrap_or_else(|| {
                crate::accel::cache_file(&crate::image::host_cache_dir(), &state_dir)
            }),
        })
        .await?;
        // The gateways' protected address is the first controller's; image downloads try
        // every controller in turn.
        let controllers = config
            .controller_url
            .as_deref()
            .map(crate::controllers::ControllerUrls::parse);
        let first_controller = controllers
            .as_ref()
            .and_then(|c| c.first().map(str::to_string));
        let network = Arc::new(
            HostNetwork::for_agent(&config.advertise_url, first_controller.as_deref()).await,
        );
        let source = controllers.map(|c| ImageSource {
            controller_urls: c.all().to_vec(),
            tls: config.controller_tls.clone(),
            token: config.token.clone(),
        });
        let images = ImageCache::open(&state_dir, source, config.image_cache_gib << 30)
            .map_err(|e| anyhow::anyhow!(e.chain()))?;
        let manager = Manager::load(
            &state_dir,
            accel,
            store.clone(),
            network.clone(),
            Arc::new(images),
            config.migration_tls.clone(),
        )
        .await
        .map_err(|e| anyhow::anyhow!(e.chain()))?;
        tracing::info!(
            name = config.name,
            qemu = %version,
            accelerator = %accel,
            shared_storage = ?store.shared_dir(),
            vms = manager.list().len(),
            startup_ms = started.elapsed().as_millis() as u64,
            "agent started"
        );
        Ok(Self {
            inner: Arc::new(Inner {
                name: config.name.clone(),
                token: config.token.clone(),
                controller_tls: config.controller_tls.clone(),
                advertise_url: config.advertise_url.clone(),
                state_dir,
                store,
                accelerator: to_api(accel),
                qemu_version: version.to_string(),
                manager,
                network,
                overcommit: config.overcommit.clone(),
            }),
        })
    }

    /// The VMs.
    /// The QEMU version of this host, e.g. `10.0.2`.
    pub fn qemu_version(&self) -> &str {
        &self.inner.qemu_version
    }

    pub fn manager(&self) -> &Manager {
        &self.inner.manager
    }

    /// The host's side of the cloud network.
    pub fn network(&self) -> &HostNetwork {
        &self.inner.network
    }

    /// The bearer token requests must carry when served without TLS.
    pub fn token(&self) -> Option<&str> {
        self.inner.token.as_deref()
    }

    /// TLS of the calls to the controller.
    pub fn controller_tls(&self) -> Option<&nimbus_pki::rustls::ClientConfig> {
        self.inner.controller_tls.as_ref()
    }

    /// The URL the controller reaches this agent at.
    pub fn advertise_url(&self) -> &str {
        &self.inner.advertise_url
    }

    /// The address migration endpoints (QEMU's listener, the NBD server) bind on: the host
    /// of the advertised URL, which the other agents already reach.
    pub fn migration_host(&self) -> AgentResult<String> {
        crate::migration::endpoint::agent_host(&self.inner.advertise_url)
            .map_err(|e| crate::error::Error::Internal(e.to_string()))
    }

    /// The accelerator VMs run with.
    pub fn accelerator(&self) -> Accelerator {
        self.inner.accelerator
    }

    /// The agent's state directory (absolute).
    pub fn state_dir(&self) -> &Path {
        &self.inner.state_dir
    }

    /// What this host offers, measured now.
    pub fn inventory(&self) -> HostInventory {
        HostInventory {
            name: self.inner.name.clone(),
            cpus: host::cpus(),
            memory_mib: host::memory_mib(),
            disk_gib: self.inner.store.free_gib(&self.inner.state_dir),
            accelerator: self.inner.accelerator,
            qemu_version: self.inner.qemu_version.clone(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            shared_storage: self
                .inner
                .store
                .shared_dir()
                .map(|d| d.display().to_string()),
            cpu_allocation_ratio: self.inner.overcommit.cpu_allocation_ratio,
            ram_allocation_ratio: self.inner.overcommit.ram_allocation_ratio,
            ksm: ksm::read(Path::new(ksm::KSM_DIR)),
            image_cache: Some(
                self.inner
                    .manager
                    .images()
                    .report(&self.inner.manager.images_in_use()),
            ),
            capabilities: nimbus_agent_api::capability::all(),
        }
    }

    /// Lets go of every VM; their QEMU processes keep running for the next agent to adopt.
    pub async fn shutdown(&self) {
        self.inner.manager.detach_all().await;
        tracing::info!("agent stopped; VMs keep running");
    }

    /// Validated access for handlers: the VM or `not_found`.
    pub(crate) fn vm(&self, id: uuid::Uuid) -> AgentResult<Arc<crate::instance::VmHandle>> {
        self.inner.manager.get(id)
    }
}

/// Turns KSM on and tunes it, unless configured to leave it alone; a host where that fails
/// runs without it (with a warning).
fn set_up_ksm(config: &crate::overcommit::KsmConfig) {
    if !config.manage {
        tracing::info!("KSM left as the kernel has it");
        return;
    }
    match ksm::apply(Path::new(ksm::KSM_DIR), config) {
        Ok(()) => tracing::info!(
            pages_to_scan = config.pages_to_scan,
            sleep_millisecs = config.sleep_millisecs,
            "KSM on"
        ),
        Err(e) => tracing::warn!(error = %e, "KSM not set up"),
    }
}

/// The contract's accelerator for QEMU's.
pub fn to_api(a: Accel) -> Accelerator {
    match a {
        Accel::Kvm => Accelerator::Kvm,
        Accel::Tcg => Accelerator::Tcg,
    }
}

/// QEMU's accelerator for the contract's.
pub fn from_api(a: Accelerator) -> Accel {
    match a {
        Accelerator::Kvm => Accel::Kvm,
        Accelerator::Tcg => Accel::Tcg,
    }
}
