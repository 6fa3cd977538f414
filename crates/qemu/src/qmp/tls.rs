//! Typed QMP commands for TLS on QEMU's network endpoints (migration stream, NBD): the
//! `tls-creds-x509` object holding a certificate, its key and the CA, and the `authz-list`
//! object that names which client certificates a server accepts.
//!
//! QEMU reads the credential files once, when the object is created: the files may be
//! removed right after [`Qmp::object_add_tls_creds`] returns.

use super::{Qmp, QmpError};
use serde_json::json;
use std::path::Path;

/// Which side of the TLS handshake a `tls-creds-x509` object is for. QEMU reads
/// `ca-cert.pem` and `<endpoint>-cert.pem`/`<endpoint>-key.pem` from its directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsEndpoint {
    Client,
    Server,
}

impl TlsEndpoint {
    /// QEMU's name of the endpoint, also the prefix of its certificate and key files.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsEndpoint::Client => "client",
            TlsEndpoint::Server => "server",
        }
    }
}

/// TLS of a server endpoint (the migration listener, the NBD server).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTls {
    /// Id of the `tls-creds-x509` object (endpoint server, peer verified).
    pub creds: String,
    /// Id of the `authz-list` object naming the accepted client; `None`: any client
    /// certificate the CA signed.
    pub authz: Option<String>,
}

/// TLS of a client endpoint (the migration stream, the NBD client node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    /// Id of the `tls-creds-x509` object (endpoint client).
    pub creds: String,
    /// The name the server's certificate must carry; `None`: the host of the address.
    pub hostname: Option<String>,
}

impl Qmp {
    /// `object-add` of a `tls-creds-x509` object `id` from the files in `dir`, verifying
    /// the peer's certificate against `dir/ca-cert.pem` (on a server: clients must present
    /// one).
    pub async fn object_add_tls_creds(
        &self,
        id: &str,
        dir: &Path,
        endpoint: TlsEndpoint,
    ) -> Result<(), QmpError> {
        let args = json!({
            "qom-type": "tls-creds-x509", "id": id, "dir": dir.to_string_lossy(),
            "endpoint": endpoint.as_str(), "verify-peer": true
        });
        self.execute("object-add", Some(args)).await.map(|_| ())
    }

    /// `object-add` of an `authz-list` object `id` that allows exactly the identities
    /// `allowed` (a client certificate's distinguished name, as GnuTLS writes it) and
    /// denies everything else.
    pub async fn object_add_authz_list(
        &self,
        id: &str,
        allowed: &[String],
    ) -> Result<(), QmpError> {
        let rules: Vec<_> = allowed
            .iter()
            .map(|m| json!({"match": m, "policy": "allow", "format": "exact"}))
            .collect();
        let args = json!({"qom-type": "authz-list", "id": id, "policy": "deny", "rules": rules});
        self.execute("object-add", Some(args)).await.map(|_| ())
    }

    /// `object-del` of the object `id`.
    pub async fn object_del(&self, id: &str) -> Result<(), QmpError> {
        self.execute("object-del", Some(json!({ "id": id })))
            .await
            .map(|_| ())
    }
}
