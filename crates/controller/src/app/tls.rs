//! The controller's side of the cloud's trust: the CA (created at first start in the data
//! dir), the certificate the controller serves and calls agents with, and the TLS settings
//! built from them (see docs/security.md).

use crate::ControllerConfig;
use nimbus_pki::{ClientAuth, CloudCa, TlsIdentity};
use std::sync::Arc;

/// The CA and the controller's identity, loaded once at start.
pub struct ControllerTls {
    pub ca: CloudCa,
    pub identity: TlsIdentity,
    /// What the API listeners serve with (client certificates optional: agents present
    /// theirs, CLI users have none).
    pub server: Arc<nimbus_pki::rustls::ServerConfig>,
    /// What calls to agents use (the controller's certificate as the client's).
    pub client: Arc<nimbus_pki::rustls::ClientConfig>,
    /// The HTTP client of calls to agents (with `client`; one connection pool).
    pub agent_http: reqwest::Client,
    /// The HTTP client of calls to other controllers (fetching image bytes one lacks): no
    /// bound on a whole download, only on connecting and on each read.
    pub peer_http: reqwest::Client,
}

impl std::fmt::Debug for ControllerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControllerTls")
            .field("ca", &self.ca)
            .finish_non_exhaustive()
    }
}

impl ControllerTls {
    /// Loads (or creates) the CA of the data dir and issues this start's certificate.
    pub fn load(config: &ControllerConfig) -> Result<Self, nimbus_pki::PkiError> {
        let ca = CloudCa::load_or_create(&config.data_dir)?;
        let identity = ca.issue_controller(&server_names(config))?;
        let server = nimbus_pki::server_config(ca.cert_pem(), &identity, ClientAuth::Optional)?;
        let client = nimbus_pki::client_config(ca.cert_pem(), Some(&identity))?;
        let agent_http = nimbus_agent_api::client::http_builder()
            .use_preconfigured_tls(client.clone())
            .build()
            .map_err(|e| nimbus_pki::PkiError::Tls(e.to_string()))?;
        let peer_http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(3))
            .read_timeout(std::time::Duration::from_secs(30))
            .use_preconfigured_tls(client.clone())
            .build()
            .map_err(|e| nimbus_pki::PkiError::Tls(e.to_string()))?;
        Ok(Self {
            ca,
            identity,
            server,
            client: Arc::new(client),
            agent_http,
            peer_http,
        })
    }
}

impl ControllerTls {
    /// A key and certificate for host `host`'s QEMU in one migration, valid for the
    /// migration's `timeout_secs` plus [`MIGRATION_CREDENTIAL_MARGIN`] (the last TLS
    /// handshake, of the memory stream, comes after the disk mirror is in sync).
    pub fn migration_credential(
        &self,
        host: &str,
        timeout_secs: u64,
    ) -> Result<nimbus_agent_api::MigrationCredential, nimbus_pki::PkiError> {
        let started = std::time::Instant::now();
        let validity = std::time::Duration::from_secs(timeout_secs) + MIGRATION_CREDENTIAL_MARGIN;
        let issued = self.ca.issue_migration(host, validity)?;
        tracing::debug!(host, took = ?started.elapsed(), valid_for = ?validity, "migration certificate issued");
        Ok(nimbus_agent_api::MigrationCredential {
            cert_pem: issued.cert_pem,
            key_pem: issued.key_pem,
        })
    }
}

/// How long a migration's certificate outlives the migration's timeout.
pub const MIGRATION_CREDENTIAL_MARGIN: std::time::Duration = std::time::Duration::from_secs(300);

/// The names the controller's certificate carries: every listen address that is not the
/// wildcard, loopback, `localhost`, this machine's host name and the configured extra names.
fn server_names(config: &ControllerConfig) -> Vec<String> {
    let mut names: Vec<String> = config
        .listen
        .iter()
        .filter(|a| !a.ip().is_unspecified())
        .map(|a| a.ip().to_string())
        .collect();
    names.extend(["127.0.0.1", "::1", "localhost"].map(String::from));
    if let Ok(h) = machine_host_name() {
        names.push(h);
    }
    names.extend(config.tls_names.iter().cloned());
    names.sort();
    names.dedup();
    names
}

fn machine_host_name() -> std::io::Result<String> {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname")?;
    let h = h.trim();
    if h.is_empty() || h.parse::<std::net::IpAddr>().is_ok() {
        return Err(std::io::Error::other("no host name"));
    }
    Ok(h.to_string())
}
