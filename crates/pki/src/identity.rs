//! Who a certificate names: parsed from the subject of a certificate our CA signed.

use crate::PkiError;
use x509_parser::prelude::*;

/// What the holder of a certificate is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A controller of the cloud (the only client the agents accept).
    Controller,
    /// An enrolled host (its agent).
    Host,
}

impl Role {
    /// The subject's `OU` for this role.
    pub fn unit(self) -> &'static str {
        match self {
            Role::Controller => "controller",
            Role::Host => "host",
        }
    }
}

/// The identity a peer proved in the TLS handshake (its chain was checked against the CA).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    pub role: Role,
    /// The host name (`CN`); `nimbus-controller` for controllers.
    pub name: String,
    /// Serial number, lowercase hex (what revocation lists).
    pub serial: String,
    /// SHA-256 of the certificate, lowercase hex.
    pub fingerprint: String,
    /// DNS names and IP addresses of the subject alternative names.
    pub addresses: Vec<String>,
}

impl PeerIdentity {
    /// Reads the identity of a DER certificate (does not verify it: TLS did).
    pub fn from_der(der: &[u8]) -> Result<Self, PkiError> {
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| PkiError::Identity(format!("unparsable certificate: {e}")))?;
        let subject = cert.subject();
        let first = |it: &mut dyn Iterator<Item = &AttributeTypeAndValue>| {
            it.next().and_then(|a| a.as_str().ok()).map(str::to_string)
        };
        let unit = first(&mut subject.iter_organizational_unit())
            .ok_or_else(|| PkiError::Identity("no OU in the subject".into()))?;
        let role = match unit.as_str() {
            "controller" => Role::Controller,
            "host" => Role::Host,
            other => return Err(PkiError::Identity(format!("unknown role OU={other}"))),
        };
        let name = first(&mut subject.iter_common_name())
            .ok_or_else(|| PkiError::Identity("no CN in the subject".into()))?;
        let mut addresses = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for n in &san.value.general_names {
                match n {
                    GeneralName::DNSName(d) => addresses.push(d.to_string()),
                    GeneralName::IPAddress(b) => {
                        if let Some(ip) = ip_from_bytes(b) {
                            addresses.push(ip.to_string());
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(Self {
            role,
            name,
            serial: hex::encode(cert.raw_serial()),
            fingerprint: crate::fingerprint(der),
            addresses,
        })
    }

    /// True when `host` (a DNS name or an IP address, as in a URL) is one of the
    /// certificate's names.
    pub fn names_address(&self, host: &str) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let parsed: Option<std::net::IpAddr> = host.parse().ok();
        self.addresses.iter().any(|a| match parsed {
            Some(ip) => a.parse::<std::net::IpAddr>().ok() == Some(ip),
            None => a.eq_ignore_ascii_case(host),
        })
    }
}

fn ip_from_bytes(b: &[u8]) -> Option<std::net::IpAddr> {
    match b.len() {
        4 => <[u8; 4]>::try_from(b).ok().map(std::net::IpAddr::from),
        16 => <[u8; 16]>::try_from(b).ok().map(std::net::IpAddr::from),
        _ => None,
    }
}

/// The subject of host `name`'s certificate (`O=nimbus, OU=host, CN=<name>`) as TLS
/// libraries print a peer's distinguished name: GnuTLS (what QEMU's `authz` objects match
/// against) writes the attributes in certificate order on some versions and in RFC 4514's
/// reverse order on others, so both are given. `name` is a DNS label (the controller
/// refuses any other host name), so nothing in it needs escaping.
pub fn host_subject_forms(name: &str) -> [String; 2] {
    subject_forms(Role::Host.unit(), name)
}

/// The same for host `name`'s certificate of one migration (`OU=migration`, see
/// [`crate::CloudCa::issue_migration`]).
pub fn migration_subject_forms(name: &str) -> [String; 2] {
    subject_forms(crate::MIGRATION_UNIT, name)
}

/// True when `der` (a certificate TLS already verified against the CA) is host `name`'s
/// certificate of one migration (`OU=migration`) or its host certificate (`OU=host`): the
/// only peers a migration's tunnel between two agents accepts.
pub fn is_migration_peer(der: &[u8], name: &str) -> bool {
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return false;
    };
    let subject = cert.subject();
    let only = |it: &mut dyn Iterator<Item = &AttributeTypeAndValue>| {
        let first = it.next().and_then(|a| a.as_str().ok()).map(str::to_string);
        // A second OU or CN would make the subject ambiguous.
        if it.next().is_some() {
            return None;
        }
        first
    };
    let unit = only(&mut subject.iter_organizational_unit());
    let common = only(&mut subject.iter_common_name());
    let unit_ok =
        matches!(unit.as_deref(), Some(u) if u == crate::MIGRATION_UNIT || u == Role::Host.unit());
    unit_ok && common.as_deref() == Some(name)
}

fn subject_forms(unit: &str, name: &str) -> [String; 2] {
    [
        format!("O=nimbus,OU={unit},CN={name}"),
        format!("CN={name},OU={unit},O=nimbus"),
    ]
}
