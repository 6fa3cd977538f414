//! The cloud's trust: a certificate authority created at the controller's first start, the
//! certificates it issues (the controller's, and each enrolled host's from the host's own
//! signing request: a host key never leaves its host), and the TLS settings built from them.
//!
//! Identity lives in the certificate's subject: `O=nimbus`, `OU=controller` or `OU=host`,
//! `CN=<host name>`. Addresses live in the subject alternative names (checked by TLS itself
//! when a client connects to a URL).
//!
//! ```text
//!  controller data dir: ca.crt ca.key(0600)      host state dir: host.key(0600) host.crt ca.crt
//!        │ issues at each start: controller cert (server + client auth, OU=controller)
//!        │ signs at enrolment:   host cert from the host's CSR (server + client auth, OU=host)
//!        │ issues per migration: a key + cert for QEMU on each end (OU=migration, minutes)
//!  CLI ──HTTPS (server cert checked against ca.crt)──▶ controller
//!  agent ──mTLS (host cert)──▶ controller ──mTLS (controller cert)──▶ agent
//! ```

mod ca;
mod error;
mod host_key;
mod identity;
mod join_token;
mod listener;
mod tls;

pub use ca::{CloudCa, IssuedHost};
pub use error::PkiError;
pub use host_key::{HostCredentials, HOST_CERT_FILE, HOST_KEY_FILE};
pub use identity::{
    host_subject_forms, is_migration_peer, migration_subject_forms, PeerIdentity, Role,
};
pub use join_token::JoinToken;
pub use listener::{PeerInfo, TlsListener};
pub use rustls;
pub use tls::{client_config, server_config, ClientAuth, TlsIdentity};
pub use tokio_rustls;

use sha2::{Digest, Sha256};

/// The subject's `OU` of a migration's short-lived certificate: not an identity any
/// listener of the cloud accepts (only QEMU's migration and NBD endpoints do).
pub const MIGRATION_UNIT: &str = "migration";

/// Name of the CA certificate file (in the controller's data dir and the host's state dir).
pub const CA_CERT_FILE: &str = "ca.crt";

/// SHA-256 of a certificate's DER bytes, lowercase hex: what users compare and join tokens
/// pin.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// The DER certificates of a PEM text (in order).
pub fn certs_from_pem(
    pem: &str,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, PkiError> {
    use rustls::pki_types::pem::PemObject;
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::Pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(PkiError::Pem("no certificate in the PEM text".into()));
    }
    Ok(certs)
}

/// Writes `contents` to `path` readable by its owner only (keys, tokens).
pub fn write_private(path: &std::path::Path, contents: &[u8]) -> Result<(), PkiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |e| PkiError::Io(path.display().to_string(), e);
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(contents).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Writes a public file (certificates) atomically.
pub fn write_public(path: &std::path::Path, contents: &[u8]) -> Result<(), PkiError> {
    let io = |e| PkiError::Io(path.display().to_string(), e);
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests;
