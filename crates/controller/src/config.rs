//! Controller configuration.

use nimbus_scheduler::{AllocationRatios, Strategy};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// How the controller runs.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Addresses the API listens on (e.g. loopback for the CLI, a bridge address for agents).
    pub listen: Vec<SocketAddr>,
    /// `sqlite://PATH` (default) or `postgres://...`.
    pub database_url: String,
    /// Where the admin token file and the cloud's CA live.
    pub data_dir: PathBuf,
    pub ratios: AllocationRatios,
    pub strategy: Strategy,
    /// How long a guest may take from launch to its ready marker.
    pub boot_timeout: Duration,
    /// How often the reconciler polls agents.
    pub reconcile_interval: Duration,
    /// An image registered at start unless one of its name exists (`nimbus up` passes the
    /// default image here).
    pub default_image: Option<nimbus_api::ImportImage>,
    /// The cloud network every instance gets a NIC on; `None` runs instances without NICs
    /// (hosts that cannot create bridges and taps, e.g. agents not run as root).
    pub network: Option<NetworkSettings>,
    /// External addresses projects allocate floating IPs from (`None`: no floating IPs).
    pub floating_ip_pool: Option<ipnet::Ipv4Net>,
    /// Failed authentications from one client address before it is answered 429.
    pub auth_failure_limit: u32,
    /// The window those failures are counted in.
    pub auth_failure_window: Duration,
    /// Reverse proxies in front of the API: from these peers (only), the client address is
    /// taken from `X-Forwarded-For`.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// How long an operation stays owned by a controller that stopped renewing its lease
    /// (it renews every quarter of this); another controller takes it over after that.
    pub lease_ttl: Duration,
    /// Tests only: shifts this controller's own clock (the times of day it records, see
    /// [`crate::app::App::clock_now`]), to show that no decision depends on it (leases and
    /// host liveness use the database's clock). Zero outside tests.
    pub clock_offset: chrono::TimeDelta,
    /// How long usage samples, operations and audit entries are kept.
    pub retention: Retention,
    /// Names (DNS or IP) the controller's certificate carries besides its listen
    /// addresses, loopback, `localhost` and the machine's host name: how agents and clients
    /// on other machines reach it.
    pub tls_names: Vec<String>,
    /// Where this controller keeps its own copies of uploaded images' bytes (`None`: the
    /// data dir). Every controller needs its own: controllers sharing one data dir on one
    /// machine (`nimbus up --controllers N`) get one each (see docs/control-plane.md).
    pub blob_dir: Option<PathBuf>,
    /// The URL the other controllers reach this one at (copies of image bytes between
    /// controllers); `None`: `https://<first listen address>`. See [`Self::peer_url`].
    pub advertise_url: Option<String>,
}

/// How long the tables that grow with use keep their rows (see `background::retention`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Raw usage samples older than this are thinned to two per meter and hour.
    pub usage_raw: Duration,
    /// Finished operations are deleted this long after they finished.
    pub operations: Duration,
    /// Audit entries are deleted this long after the call.
    pub audit: Duration,
    /// How often the retention task runs.
    pub interval: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        const DAY: u64 = 24 * 3600;
        Self {
            usage_raw: Duration::from_secs(2 * DAY),
            operations: Duration::from_secs(30 * DAY),
            audit: Duration::from_secs(90 * DAY),
            interval: Duration::from_secs(600),
        }
    }
}

/// The default network: a /16 (or smaller) prefix spread over all hosts by VXLAN.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkSettings {
    /// Network address, e.g. 10.200.0.0.
    pub address: std::net::Ipv4Addr,
    pub prefix_len: u8,
    pub vni: u32,
}

impl Default for NetworkSettings {
    fn default() -> Self {
        Self {
            address: std::net::Ipv4Addr::new(10, 200, 0, 0),
            prefix_len: 16,
            vni: 4200,
        }
    }
}

impl ControllerConfig {
    /// Defaults for a data directory: SQLite inside it, loopback listen address.
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 7700))],
            database_url: format!("sqlite://{}/nimbus.db", data_dir.display()),
            data_dir,
            ratios: AllocationRatios::default(),
            strategy: Strategy::Spread,
            boot_timeout: Duration::from_secs(300),
            reconcile_interval: Duration::from_secs(2),
            default_image: None,
            network: None,
            floating_ip_pool: None,
            auth_failure_limit: 10,
            auth_failure_window: Duration::from_secs(60),
            trusted_proxies: Vec::new(),
            lease_ttl: Duration::from_secs(10),
            clock_offset: chrono::TimeDelta::zero(),
            retention: Retention::default(),
            tls_names: Vec::new(),
            blob_dir: None,
            advertise_url: None,
        }
    }

    /// The URL the other controllers reach this one at: `advertise_url`, else
    /// `https://<first listen address>`.
    pub fn peer_url(&self) -> String {
        match &self.advertise_url {
            Some(url) => url.clone(),
            None => self
                .listen
                .first()
                .map(|a| format!("https://{a}"))
                .unwrap_or_default(),
        }
    }

    /// Where this controller's copies of image bytes live.
    pub fn blob_dir(&self) -> &std::path::Path {
        self.blob_dir.as_deref().unwrap_or(&self.data_dir)
    }
}
