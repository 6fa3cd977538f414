//! Application logic, one module per resource. Handlers in `http/` call these; so do the
//! operations and the reconciler.

pub mod audit;
pub mod auth;
pub mod bootstrap;
pub mod clones;
pub mod cloud_init;
pub mod enrolment;
pub mod error;
pub mod firewall;
pub mod flavors;
pub mod groups;
pub mod ha;
pub mod hosts;
pub mod image_bake;
pub mod image_blobs;
pub mod image_upload;
pub mod images;
pub mod instances;
pub mod keypairs;
pub mod migrations;
pub mod network;
pub mod networks;
pub mod operations;
pub mod orphans;
pub mod placement_groups;
pub mod projects;
pub mod quotas;
pub mod scaling;
pub mod secgroups;
pub mod snapshots;
pub mod throttle;
pub mod tls;
pub mod tokens;
pub mod usage;

pub use auth::Caller;
pub use error::AppError;

use crate::ControllerConfig;
use nimbus_agent_api::AgentClient;
use nimbus_store::Store;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use uuid::Uuid;

/// Shared state of the controller; cheap to clone.
#[derive(Clone)]
pub struct App {
    inner: Arc<Inner>,
}

struct Inner {
    config: ControllerConfig,
    store: Store,
    /// Serialises placement decisions of this controller so that two concurrent creates
    /// cannot both take the last free slot of a host.
    placement: tokio::sync::Mutex<()>,
    /// Operations this controller is running now (so a resume does not start them twice).
    running_ops: Mutex<HashSet<Uuid>>,
    /// Failed authentications per client address.
    auth_throttle: throttle::AuthThrottle,
    /// Per-instance CPU use for scaling groups (see `scaling::CpuSource`).
    cpu: Arc<dyn scaling::CpuSource>,
    /// The bytes of uploaded images.
    blobs: image_blobs::ImageBlobs,
    /// The CA and the controller's certificate.
    tls: tls::ControllerTls,
}

impl App {
    /// Opens the store (running migrations).
    pub async fn open(config: ControllerConfig) -> Result<Self, AppError> {
        let store = Store::connect(&config.database_url).await?;
        let blobs = image_blobs::ImageBlobs::open(&config.data_dir)?;
        let tls = tls::ControllerTls::load(&config).map_err(|e| {
            AppError::internal(format!(
                "cannot set up the cloud CA in {}: {e}",
                config.data_dir.display()
            ))
        })?;
        Ok(Self {
            inner: Arc::new(Inner {
                auth_throttle: throttle::AuthThrottle::new(
                    config.auth_failure_limit,
                    config.auth_failure_window,
                ),
                config,
                store,
                placement: tokio::sync::Mutex::new(()),
                running_ops: Mutex::new(HashSet::new()),
                cpu: Arc::new(scaling::AgentCpu::default()),
                blobs,
                tls,
            }),
        })
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Where scaling groups get their members' CPU use.
    pub fn cpu(&self) -> &dyn scaling::CpuSource {
        self.inner.cpu.as_ref()
    }

    /// The bytes of uploaded images.
    pub fn image_blobs(&self) -> &image_blobs::ImageBlobs {
        &self.inner.blobs
    }

    pub fn config(&self) -> &ControllerConfig {
        &self.inner.config
    }

    /// The CA and the controller's certificate.
    pub fn tls(&self) -> &tls::ControllerTls {
        &self.inner.tls
    }

    /// Failed authentications per client address.
    pub fn auth_throttle(&self) -> &throttle::AuthThrottle {
        &self.inner.auth_throttle
    }

    /// A client of the agent at `agent_url`.
    pub fn agent(&self, agent_url: &str) -> AgentClient {
        AgentClient::with_http(agent_url, self.inner.tls.agent_http.clone())
    }

    /// A client of the agent of host `name`.
    pub async fn agent_of(&self, host: &str) -> Result<AgentClient, AppError> {
        let h = self.store().get_host(host).await?;
        Ok(self.agent(&h.agent_url))
    }

    pub(crate) async fn placement_lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.inner.placement.lock().await
    }

    /// Marks an operation as running here; false if it already is.
    pub(crate) fn claim_operation(&self, id: Uuid) -> bool {
        self.inner
            .running_ops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id)
    }

    pub(crate) fn release_operation(&self, id: Uuid) {
        self.inner
            .running_ops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }
}
