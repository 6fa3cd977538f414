//! The cloud CA: created at the controller's first start, kept in its data dir (`ca.key`
//! mode 0600, `ca.crt`), reused on every later start.

use crate::{
    fingerprint, write_private, write_public, PkiError, Role, TlsIdentity, CA_CERT_FILE,
    MIGRATION_UNIT,
};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use std::path::Path;
use time::{Duration, OffsetDateTime};

/// Name of the CA key file in the controller's data dir.
pub const CA_KEY_FILE: &str = "ca.key";
/// How long the CA is valid.
const CA_VALIDITY: Duration = Duration::days(3650);
/// How long a host certificate is valid (rotation: `nimbus host remove` and a new join).
const HOST_VALIDITY: Duration = Duration::days(3650);
/// How long a controller certificate is valid (a new one is issued at every start).
const CONTROLLER_VALIDITY: Duration = Duration::days(365);
/// Clock skew tolerated between controller and hosts (certificates start this early).
const BACKDATE: Duration = Duration::hours(1);
/// The same for a migration's certificate, as short as enrolment's clock check allows.
const MIGRATION_BACKDATE: Duration = Duration::minutes(5);

/// The certificate authority of one cloud.
pub struct CloudCa {
    cert_pem: String,
    cert_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

/// A host certificate just signed.
#[derive(Debug, Clone)]
pub struct IssuedHost {
    pub cert_pem: String,
    /// Serial number, lowercase hex.
    pub serial: String,
    /// SHA-256 of the certificate, lowercase hex.
    pub fingerprint: String,
}

impl std::fmt::Debug for CloudCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloudCa")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

impl CloudCa {
    /// Loads the CA of `dir`, creating it on first use.
    pub fn load_or_create(dir: &Path) -> Result<Self, PkiError> {
        let key_path = dir.join(CA_KEY_FILE);
        let cert_path = dir.join(CA_CERT_FILE);
        if key_path.exists() {
            let read = |p: &Path| {
                std::fs::read_to_string(p).map_err(|e| PkiError::Io(p.display().to_string(), e))
            };
            let key = KeyPair::from_pem(&read(&key_path)?)?;
            let cert_pem = read(&cert_path)?;
            return Self::from_parts(cert_pem, key);
        }
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = subject("nimbus cloud CA", "ca");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + CA_VALIDITY;
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key)?;
        write_private(&key_path, key.serialize_pem().as_bytes())?;
        write_public(&cert_path, cert.pem().as_bytes())?;
        tracing::info!(
            fingerprint = fingerprint(cert.der()),
            "created the cloud CA"
        );
        Self::from_parts(cert.pem(), key)
    }

    fn from_parts(cert_pem: String, key: KeyPair) -> Result<Self, PkiError> {
        let cert_der = crate::certs_from_pem(&cert_pem)?
            .into_iter()
            .next()
            .map(|c| c.to_vec())
            .ok_or_else(|| PkiError::Pem("empty CA certificate".into()))?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)?;
        Ok(Self {
            cert_pem,
            cert_der,
            issuer,
        })
    }

    /// The CA certificate (PEM): what clients trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// SHA-256 of the CA certificate (hex): what join tokens pin.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.cert_der)
    }

    /// A fresh key and certificate for the controller, naming `names` (IP addresses or DNS
    /// names): the server certificate of the API and the client certificate agents accept.
    pub fn issue_controller(&self, names: &[String]) -> Result<TlsIdentity, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = leaf_params(Role::Controller.unit(), "nimbus-controller", names)?;
        params.not_after = OffsetDateTime::now_utc() + CONTROLLER_VALIDITY;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(TlsIdentity {
            cert_pem: format!("{}{}", cert.pem(), self.cert_pem),
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs a host's certificate signing request: the certificate names `host` (its
    /// identity) and `addresses` (where it serves). Only the CSR's public key is used; its
    /// subject and extensions are ignored.
    pub fn sign_host(
        &self,
        csr_pem: &str,
        host: &str,
        addresses: &[String],
    ) -> Result<IssuedHost, PkiError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| PkiError::Csr(e.to_string()))?;
        let mut params = leaf_params(Role::Host.unit(), host, addresses)?;
        params.not_after = OffsetDateTime::now_utc() + HOST_VALIDITY;
        let serial = params
            .serial_number
            .as_ref()
            .map(|s| hex::encode(s.to_bytes()))
            .unwrap_or_default();
        let cert = params.signed_by(&csr.public_key, &self.issuer)?;
        Ok(IssuedHost {
            cert_pem: cert.pem(),
            serial,
            fingerprint: fingerprint(cert.der()),
        })
    }

    /// A fresh key and a certificate for one live migration of host `host` (source or target),
    /// valid for `validity` from now: what QEMU gets instead of the host's long-term key, so
    /// that a guest escaping into its QEMU during a migration gets a key that expires with the
    /// migration. `OU=migration`: no listener of the cloud takes it for a host's or the
    /// controller's identity ([`crate::PeerIdentity::from_der`] refuses it); `CN` and the DNS
    /// name are the host's, what QEMU's `tls-authz` and `tls-hostname` check.
    pub fn issue_migration(
        &self,
        host: &str,
        validity: std::time::Duration,
    ) -> Result<TlsIdentity, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = leaf_params(MIGRATION_UNIT, host, &[host.to_string()])?;
        // Hosts' clocks may be up to 5 minutes off (enrolment refuses more).
        params.not_before = OffsetDateTime::now_utc() - MIGRATION_BACKDATE;
        let validity = Duration::try_from(validity)
            .map_err(|e| PkiError::Identity(format!("validity out of range: {e}")))?;
        params.not_after = OffsetDateTime::now_utc() + validity;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(TlsIdentity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// `O=nimbus, OU=<unit>, CN=<name>`.
fn subject(name: &str, unit: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "nimbus");
    dn.push(DnType::OrganizationalUnitName, unit);
    dn.push(DnType::CommonName, name);
    dn
}

/// Parameters of a leaf certificate (`OU=unit`): usable as TLS server and client.
fn leaf_params(unit: &str, name: &str, names: &[String]) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = subject(name, unit);
    params.subject_alt_names = names
        .iter()
        .map(|n| match n.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => n
                .clone()
                .try_into()
                .map(SanType::DnsName)
                .map_err(PkiError::Cert),
        })
        .collect::<Result<_, _>>()?;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.not_before = OffsetDateTime::now_utc() - BACKDATE;
    params.serial_number = Some(random_serial());
    Ok(params)
}

/// 16 random bytes, positive (RFC 5280 allows up to 20 octets).
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}
