//! Application logic, one module per resource. Handlers in `http/` call these; so do the
//! operations and the reconciler.

pub mod audit;
pub mod auth;
pub mod bootstrap;
pub mod claims;
pub mod clones;
pub mod cloud_init;
pub mod controllers;
pub mod dns;
pub mod enrolment;
pub mod error;
pub mod firewall;
pub mod flavors;
pub mod floating_ips;
pub mod groups;
pub mod ha;
pub mod host_capabilities;
pub mod hosts;
pub mod image_bake;
pub mod image_blobs;
pub mod image_copies;
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
pub mod replica_copies;
pub mod replicas;
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
use std::sync::Arc;
use uuid::Uuid;

/// Shared state of the controller; cheap to clone.
#[derive(Clone)]
pub struct App {
    inner: Arc<Inner>,
    /// The store this handle writes through: the controller's own, or the same fenced by a
    /// background task's lease ([`App::fenced`]).
    store: Store,
}

struct Inner {
    config: ControllerConfig,
    store: Store,
    /// This controller's identity in the `controllers` table (new at every start): the owner
    /// of the operations it runs.
    id: Uuid,
    /// Failed authentications per client address.
    auth_throttle: throttle::AuthThrottle,
    /// Per-instance CPU use for scaling groups (see `scaling::CpuSource`).
    cpu: Arc<dyn scaling::CpuSource>,
    /// The bytes of uploaded images.
    blobs: image_blobs::ImageBlobs,
    /// Snapshots replicated off their hosts, for HA restarts of local-disk instances.
    replicas: replicas::ReplicaStore,
    /// The CA and the controller's certificate.
    tls: tls::ControllerTls,
    /// Snapshot copies of live migrations running in the background.
    snapshot_copies: crate::ops::snapshot_copies::SnapshotCopies,
    /// Bumped each time an operation run here ends: wakes the requests waiting for one
    /// (see [`App::wait_operation`]).
    operations_ended: tokio::sync::watch::Sender<()>,
}

impl App {
    /// Opens the store (running migrations).
    pub async fn open(config: ControllerConfig) -> Result<Self, AppError> {
        let store = Store::connect(&config.database_url).await?;
        let blobs = image_blobs::ImageBlobs::open(config.blob_dir())?;
        // Its own replicas beside its own image copies: each controller holds every
        // replicated snapshot (see `replica_copies`).
        let replicas = replicas::ReplicaStore::open(config.blob_dir())?;
        let tls = tls::ControllerTls::load(&config).map_err(|e| {
            AppError::internal(format!(
                "cannot set up the cloud CA in {}: {e}",
                config.data_dir.display()
            ))
        })?;
        Ok(Self {
            store: store.clone(),
            inner: Arc::new(Inner {
                auth_throttle: throttle::AuthThrottle::new(
                    config.auth_failure_limit,
                    config.auth_failure_window,
                ),
                config,
                store,
                id: Uuid::new_v4(),
                cpu: Arc::new(scaling::AgentCpu::default()),
                blobs,
                replicas,
                tls,
                snapshot_copies: Default::default(),
                operations_ended: tokio::sync::watch::Sender::new(()),
            }),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// This controller with every store transaction fenced by `lease`: what a background
    /// task run by one controller at a time acts through, so that once the task moved to
    /// another controller nothing it does here is written (see `background::task`).
    pub fn fenced(&self, lease: nimbus_store::TaskLease) -> App {
        App {
            inner: self.inner.clone(),
            store: self.inner.store.fenced(lease),
        }
    }

    /// This controller without a background task's fence: operations started by a task run
    /// under their own lease and epoch, whoever holds the task later.
    pub fn unfenced(&self) -> App {
        App {
            inner: self.inner.clone(),
            store: self.inner.store.clone(),
        }
    }

    /// Where scaling groups get their members' CPU use.
    pub fn cpu(&self) -> &dyn scaling::CpuSource {
        self.inner.cpu.as_ref()
    }

    /// The bytes of uploaded images.
    pub fn image_blobs(&self) -> &image_blobs::ImageBlobs {
        &self.inner.blobs
    }

    /// Snapshots replicated off their hosts (see [`replicas`]).
    pub fn replicas(&self) -> &replicas::ReplicaStore {
        &self.inner.replicas
    }

    pub fn config(&self) -> &ControllerConfig {
        &self.inner.config
    }

    /// This controller's time of day (shifted by [`ControllerConfig::clock_offset`] in
    /// tests): for what is displayed, never for what decides between controllers.
    pub fn clock_now(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::Utc::now() + self.inner.config.clock_offset
    }

    /// The CA and the controller's certificate.
    pub fn tls(&self) -> &tls::ControllerTls {
        &self.inner.tls
    }

    /// Snapshot copies of live migrations running in the background (see
    /// [`crate::ops::snapshot_copies`]).
    pub fn snapshot_copies(&self) -> &crate::ops::snapshot_copies::SnapshotCopies {
        &self.inner.snapshot_copies
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

    /// This controller's identity (owner of the operations it runs).
    pub fn controller_id(&self) -> Uuid {
        self.inner.id
    }
}
