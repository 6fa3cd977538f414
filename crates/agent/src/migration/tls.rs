//! TLS of a migration: the rule of this agent (required, or `--insecure-migration`) and the
//! settings of the agents' tunnels (see `tunnel.rs`) that carry both the memory stream and
//! the NBD connection of a mirrored disk between the hosts, with certificates of the cloud
//! CA, so that nobody on the underlay can read a guest's memory or disk, feed a target a
//! VM, or write into a mirrored disk.
//!
//! ```text
//!  source QEMU                 source agent                     target agent        target QEMU
//!  migrate unix:migration-out.sock ─▶ ═══ TLS 1.3, mTLS ═══▶ port 1 ─▶ migrate-incoming unix:migration-in.sock
//!  blockdev-add nbd unix:nbd-out.sock ▶ ═══ TLS 1.3, mTLS ═══▶ port 2 ─▶ nbd-server-start unix:nbd-in.sock
//! ```
//! - Both ends verify the other's certificate against the cloud CA; the names come from
//!   the controller (`IncomingRequest::source_host`, `MigrateRequest::target_host`), never
//!   from the peer.
//! - The agents use the certificate the controller issued for this one migration and this
//!   end (`IncomingRequest::tls_credential`, `MigrateRequest::tls_credential`: `OU=migration`,
//!   `CN` = the host, expiring with the migration's timeout plus 5 minutes); only a request
//!   of an older controller, without one, makes the tunnel use the host's own key. QEMU
//!   holds no key at all: it talks in clear to unix sockets of its VM directory, which only
//!   its confined user (and root) may enter.
//! - `nimbus agent --insecure-migration` (benchmarks, trusted underlays) serves incoming
//!   migrations and disk mirrors over plain TCP and, as a source, follows what the target
//!   serves. An agent that requires TLS refuses to send a VM in clear.

use super::tunnel::{OutgoingTunnel, Stream, TunnelTls, NBD_OUTGOING_SOCKET};
use super::MigrationError;
use crate::instance::files::VmDir;
use nimbus_agent_api::{IncomingReady, MigrationCredential, NbdTarget};
use nimbus_qemu::qmp::{MigrateParameters, NbdAddress};
use std::path::Path;
use std::sync::Arc;

/// The host's identity, as the tunnels need it: its name, certificate, key and the cloud CA.
pub struct HostTlsFiles {
    /// The host's name (its certificate's `CN`).
    pub host: String,
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for HostTlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostTlsFiles")
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

impl HostTlsFiles {
    /// The enrolled identity of host `name` in its state dir.
    pub fn load(state_dir: &Path, name: &str) -> Result<Self, nimbus_pki::PkiError> {
        let creds = nimbus_pki::HostCredentials::new(state_dir);
        let identity = creds.identity()?;
        Ok(Self {
            host: name.to_string(),
            ca_pem: creds.ca_pem()?,
            cert_pem: identity.cert_pem,
            key_pem: identity.key_pem,
        })
    }
}

/// How this agent secures its migrations.
#[derive(Debug, Clone)]
pub struct MigrationTls {
    creds: Option<Arc<HostTlsFiles>>,
    /// Plain TCP is allowed (incoming migrations are served in clear).
    insecure: bool,
}

impl MigrationTls {
    /// TLS required both ways (what `nimbus agent` does by default).
    pub fn required(creds: HostTlsFiles) -> Self {
        Self {
            creds: Some(Arc::new(creds)),
            insecure: false,
        }
    }

    /// Plain TCP for incoming migrations; as a source, TLS when the target asks for it
    /// and `creds` are there (`--insecure-migration`; `None`: in-process test agents).
    pub fn insecure(creds: Option<HostTlsFiles>) -> Self {
        Self {
            creds: creds.map(Arc::new),
            insecure: true,
        }
    }

    /// The same, with the tunnels using `issued` (this migration's certificate, see the
    /// module doc) instead of the host's key; unchanged without one.
    pub fn for_migration(&self, issued: Option<&MigrationCredential>) -> Self {
        let (Some(host), Some(issued)) = (&self.creds, issued) else {
            return self.clone();
        };
        Self {
            creds: Some(Arc::new(HostTlsFiles {
                host: host.host.clone(),
                ca_pem: host.ca_pem.clone(),
                cert_pem: issued.cert_pem.clone(),
                key_pem: issued.key_pem.clone(),
            })),
            insecure: self.insecure,
        }
    }

    /// Whether incoming migrations are served over TLS (the agents' tunnel).
    pub fn serves_tls(&self) -> bool {
        self.creds.is_some() && !self.insecure
    }

    /// The settings of the agents' tunnel (see `tunnel.rs`), from this end's credentials.
    pub fn tunnel(&self) -> Result<TunnelTls, MigrationError> {
        let creds = self.creds.as_deref().ok_or_else(|| {
            MigrationError::Setup("this agent has no host certificate for TLS".into())
        })?;
        TunnelTls::new(&creds.ca_pem, &creds.cert_pem, &creds.key_pem)
    }

    /// Source: where QEMU sends the memory of a VM to `target`: through a tunnel to the
    /// target agent when it serves TLS (its first `ahead` connections opened at once),
    /// else straight to its URI (checked by [`Self::check_target`]: only an insecure
    /// agent sends in clear).
    pub fn outgoing_stream(
        &self,
        dir: &VmDir,
        target: &IncomingReady,
        target_host: Option<&str>,
        ahead: usize,
    ) -> Result<(String, Option<OutgoingTunnel>), MigrationError> {
        if !target.tls {
            return Ok((target.migration_uri.clone(), None));
        }
        let address = target
            .migration_uri
            .strip_prefix("tcp:")
            .ok_or_else(|| {
                MigrationError::Setup(format!(
                    "the target's migration address {:?} is not tcp:HOST:PORT",
                    target.migration_uri
                ))
            })?
            .to_string();
        let tunnel = self.open_tunnel(dir, Stream::Memory, address, target_host, ahead)?;
        Ok((OutgoingTunnel::qemu_uri(), Some(tunnel)))
    }

    /// Source: where QEMU's NBD client mirrors the disk to the export `nbd` of `target`:
    /// through a tunnel to the target agent when it serves TLS, else straight to the
    /// target QEMU's NBD port.
    pub fn outgoing_disk(
        &self,
        dir: &VmDir,
        target: &IncomingReady,
        nbd: &NbdTarget,
        target_host: Option<&str>,
    ) -> Result<DiskRoute, MigrationError> {
        let tunnel = if target.tls {
            let address = format!("{}:{}", nbd.host, nbd.port);
            Some(self.open_tunnel(dir, Stream::Disk, address, target_host, 0)?)
        } else {
            None
        };
        Ok(DiskRoute {
            target: nbd.clone(),
            tunnel,
        })
    }

    fn open_tunnel(
        &self,
        dir: &VmDir,
        stream: Stream,
        address: String,
        target_host: Option<&str>,
        ahead: usize,
    ) -> Result<OutgoingTunnel, MigrationError> {
        let host = target_host.ok_or_else(|| {
            MigrationError::Setup(
                "the controller named no target host: the target of a TLS migration cannot \
                 be checked (upgrade the controller)"
                    .into(),
            )
        })?;
        check_host_name(host)?;
        OutgoingTunnel::open(dir, stream, address, host, &self.tunnel()?, ahead)
    }

    /// Source: checks the target's TLS matches this agent's rule: a plain target only for
    /// an insecure agent, a TLS one only with a certificate.
    pub fn check_target(
        &self,
        target: &IncomingReady,
        target_host: Option<&str>,
    ) -> Result<(), MigrationError> {
        if !target.tls {
            if !self.insecure {
                return Err(MigrationError::Setup(
                    "the target serves migrations without TLS (started with \
                     --insecure-migration): this host sends VMs over TLS only; start both \
                     agents with the same setting"
                        .into(),
                ));
            }
            return Ok(());
        }
        if self.creds.is_none() {
            return Err(MigrationError::Setup(
                "the target requires TLS but this agent has no host certificate".into(),
            ));
        }
        if let Some(host) = target_host {
            check_host_name(host)?;
        }
        Ok(())
    }
}

/// Where the source QEMU's NBD client connects for a disk mirror, and the tunnel that
/// carries it (a TLS target) while this lives.
pub struct DiskRoute {
    target: NbdTarget,
    tunnel: Option<OutgoingTunnel>,
}

impl DiskRoute {
    /// The address for QEMU's `blockdev-add nbd` (a socket relative to its working
    /// directory, the VM directory, when tunnelled).
    pub fn address(&self) -> NbdAddress<'_> {
        match self.tunnel {
            Some(_) => NbdAddress::Unix(Path::new(NBD_OUTGOING_SOCKET)),
            None => NbdAddress::Tcp {
                host: &self.target.host,
                port: self.target.port,
            },
        }
    }

    /// The name of the export.
    pub fn export(&self) -> &str {
        &self.target.export
    }
}

/// The source's migration parameters `params` with QEMU's own TLS explicitly off: the
/// agents carry the stream, and a QEMU keeps the parameters of its previous migrations (one
/// started under an older agent may still name a TLS object it no longer has).
pub fn client_parameters(mut params: MigrateParameters) -> MigrateParameters {
    params.tls_creds = Some(String::new());
    params.tls_hostname = Some(String::new());
    params
}

/// A host name as the controller allows them (a DNS label): safe in a distinguished name.
pub(super) fn check_host_name(name: &str) -> Result<(), MigrationError> {
    nimbus_api::name::validate_name(name).map_err(|e| {
        MigrationError::Setup(format!(
            "{name:?} is not a host name ({e}): the peer of a migration cannot be checked"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> HostTlsFiles {
        HostTlsFiles {
            host: "h1".into(),
            ca_pem: "CA".into(),
            cert_pem: "CERT".into(),
            key_pem: "KEY".into(),
        }
    }

    /// A secure agent never sends in clear; an insecure one follows the target.
    #[test]
    fn only_an_insecure_agent_sends_to_a_plain_target() {
        let plain = IncomingReady {
            migration_uri: "tcp:10.0.0.2:4444".into(),
            nbd: None,
            tls: false,
        };
        let secure = MigrationTls::required(files());
        assert!(secure.check_target(&plain, Some("h2")).is_err());
        assert!(MigrationTls::insecure(None)
            .check_target(&plain, Some("h2"))
            .is_ok());
        let tls = IncomingReady { tls: true, ..plain };
        assert!(secure.check_target(&tls, Some("h2")).is_ok());
        assert!(secure.check_target(&tls, Some("h,OU=x")).is_err());
        assert!(MigrationTls::insecure(None)
            .check_target(&tls, Some("h2"))
            .is_err());
    }

    #[test]
    fn only_dns_labels_name_a_peer() {
        assert!(check_host_name("host-2").is_ok());
        for bad in ["", "h,OU=x", "H", "a=b", "x\\"] {
            assert!(check_host_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_tunnel_gets_the_migration_key_not_the_host_key() {
        let issued = MigrationCredential {
            cert_pem: "MCERT".into(),
            key_pem: "MKEY".into(),
        };
        let tls = MigrationTls::required(files()).for_migration(Some(&issued));
        let creds = tls.creds.as_deref().expect("creds");
        assert_eq!((creds.host.as_str(), creds.ca_pem.as_str()), ("h1", "CA"));
        assert_eq!(
            (creds.cert_pem.as_str(), creds.key_pem.as_str()),
            ("MCERT", "MKEY")
        );
        assert!(!tls.insecure);
        let unchanged = MigrationTls::required(files()).for_migration(None);
        assert_eq!(unchanged.creds.as_deref().expect("creds").key_pem, "KEY");
        // An agent without host credentials (in-process tests) stays without.
        assert!(MigrationTls::insecure(None)
            .for_migration(Some(&issued))
            .creds
            .is_none());
    }

    #[test]
    fn the_key_never_shows_in_logs() {
        let shown = format!("{:?}", MigrationTls::required(files()));
        assert!(shown.contains("h1") && !shown.contains("KEY"), "{shown}");
    }
}
