//! rustls settings built from the CA and an identity.

use crate::PkiError;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::sync::Arc;

/// A key and its certificate chain (PEM).
#[derive(Clone)]
pub struct TlsIdentity {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity").finish_non_exhaustive()
    }
}

/// Whether a server asks its clients for a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Clients may present one (the controller: CLI users have none, agents have theirs).
    Optional,
    /// Clients must present one signed by the CA (the agents' API).
    Required,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca_pem: &str) -> Result<RootCertStore, PkiError> {
    let mut roots = RootCertStore::empty();
    for cert in crate::certs_from_pem(ca_pem)? {
        roots
            .add(cert)
            .map_err(|e| PkiError::Tls(format!("bad CA certificate: {e}")))?;
    }
    Ok(roots)
}

fn key_and_chain(
    id: &TlsIdentity,
) -> Result<
    (
        Vec<rustls::pki_types::CertificateDer<'static>>,
        PrivateKeyDer<'static>,
    ),
    PkiError,
> {
    let chain = crate::certs_from_pem(&id.cert_pem)?;
    let key = PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes())
        .map_err(|e| PkiError::Pem(format!("private key: {e}")))?;
    Ok((chain, key))
}

/// A server presenting `id`, checking client certificates against `ca_pem` as `auth` says.
pub fn server_config(
    ca_pem: &str,
    id: &TlsIdentity,
    auth: ClientAuth,
) -> Result<Arc<ServerConfig>, PkiError> {
    let tls = |e: rustls::Error| PkiError::Tls(e.to_string());
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca_pem)?), provider());
    let builder = match auth {
        ClientAuth::Optional => builder.allow_unauthenticated(),
        ClientAuth::Required => builder,
    };
    let verifier = builder.build().map_err(|e| PkiError::Tls(e.to_string()))?;
    let (chain, key) = key_and_chain(id)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(tls)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A client trusting `ca_pem` only, presenting `id` when given.
pub fn client_config(ca_pem: &str, id: Option<&TlsIdentity>) -> Result<ClientConfig, PkiError> {
    let tls = |e: rustls::Error| PkiError::Tls(e.to_string());
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls)?
        .with_root_certificates(roots(ca_pem)?);
    let mut config = match id {
        Some(id) => {
            let (chain, key) = key_and_chain(id)?;
            builder.with_client_auth_cert(chain, key).map_err(tls)?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
