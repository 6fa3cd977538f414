//! Errors of the PKI.

/// What went wrong creating, loading or checking certificates.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot read or write {0}")]
    Io(String, #[source] std::io::Error),
    #[error("bad PEM: {0}")]
    Pem(String),
    #[error("certificate error: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("bad certificate signing request: {0}")]
    Csr(String),
    #[error("the certificate is not a nimbus identity: {0}")]
    Identity(String),
    #[error("TLS settings: {0}")]
    Tls(String),
}
