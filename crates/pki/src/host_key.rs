//! A host's side of its identity: its private key (made on the host, never sent), the
//! signing request it sends to enrol, and the certificate it got back.

use crate::{write_private, write_public, PkiError, TlsIdentity, CA_CERT_FILE};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use std::path::{Path, PathBuf};

/// The host's private key in its state dir (mode 0600).
pub const HOST_KEY_FILE: &str = "host.key";
/// The host's certificate in its state dir.
pub const HOST_CERT_FILE: &str = "host.crt";

/// The files of a host's identity in its state dir.
#[derive(Debug, Clone)]
pub struct HostCredentials {
    dir: PathBuf,
}

impl HostCredentials {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            dir: state_dir.to_path_buf(),
        }
    }

    /// True once the host is enrolled (it has a certificate and the CA).
    pub fn enrolled(&self) -> bool {
        self.dir.join(HOST_CERT_FILE).exists()
            && self.dir.join(HOST_KEY_FILE).exists()
            && self.dir.join(CA_CERT_FILE).exists()
    }

    /// A signing request for `name`, with a new key saved beside (an earlier key is
    /// replaced: a new enrolment is a new identity).
    pub fn new_request(&self, name: &str) -> Result<String, PkiError> {
        let key = KeyPair::generate()?;
        write_private(
            &self.dir.join(HOST_KEY_FILE),
            key.serialize_pem().as_bytes(),
        )?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        Ok(params.serialize_request(&key)?.pem()?)
    }

    /// Saves what the controller answered to the enrolment.
    pub fn save(&self, cert_pem: &str, ca_pem: &str) -> Result<(), PkiError> {
        write_public(&self.dir.join(CA_CERT_FILE), ca_pem.as_bytes())?;
        write_public(&self.dir.join(HOST_CERT_FILE), cert_pem.as_bytes())
    }

    /// The host's key and certificate.
    pub fn identity(&self) -> Result<TlsIdentity, PkiError> {
        Ok(TlsIdentity {
            cert_pem: self.read(HOST_CERT_FILE)?,
            key_pem: self.read(HOST_KEY_FILE)?,
        })
    }

    /// The CA certificate the host trusts.
    pub fn ca_pem(&self) -> Result<String, PkiError> {
        self.read(CA_CERT_FILE)
    }

    fn read(&self, file: &str) -> Result<String, PkiError> {
        let p = self.dir.join(file);
        std::fs::read_to_string(&p).map_err(|e| PkiError::Io(p.display().to_string(), e))
    }
}
