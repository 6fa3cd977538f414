//! TLS of a migration: the rule of this agent (required, or `--insecure-migration`), the
//! settings of the agents' tunnel that carries the memory stream (see `tunnel.rs`), and
//! QEMU's own `tls-creds-x509` for the NBD disk mirror, with the certificates of the cloud
//! CA, so that nobody on the underlay can read a guest's memory or disk, feed a target a
//! VM, or write into a mirrored disk. The picture below is the NBD connection's:
//!
//! ```text
//!  source QEMU (client)                                 target QEMU (server)
//!  tls-creds-x509 endpoint=client verify-peer            tls-creds-x509 endpoint=server verify-peer
//!    cert: source host's, CA: the cloud's                  cert: target host's, CA: the cloud's
//!  blockdev-add nbd                                      nbd-server-start
//!    tls-hostname = target host name  ──── TLS 1.3 ────▶   tls-authz = authz-list: allow only
//!    (its certificate must name it)                        CN=<source host> (the controller's
//!                                                          choice; OU=migration or host),
//!                                                          deny everything else
//! ```
//! - Both ends verify the other's certificate against the cloud CA; the names come from
//!   the controller (`IncomingRequest::source_host`, `MigrateRequest::target_host`), never
//!   from the peer.
//! - QEMU gets the certificate the controller issued for this one migration and this end
//!   (`IncomingRequest::tls_credential`, `MigrateRequest::tls_credential`: `OU=migration`,
//!   `CN` = the host, expiring with the migration's timeout plus 5 minutes), never the
//!   host's long-term key: a guest that escapes into its QEMU during a migration gets a key
//!   that expires in minutes and that no API of the cloud accepts. Only a request of an
//!   older controller, without one, makes QEMU load the host's own key.
//! - The credentials are handed to the confined QEMU without widening what it can read:
//!   the files are written into `<vm dir>/migration-tls/` (0700, files 0600, owned by the
//!   VM's user, like everything else of that VM), QEMU loads them when the object is created
//!   (by a path relative to its working directory, the VM directory: the directories above
//!   may be closed to the VM's user), and the directory is removed right after. QEMU keeps
//!   the key in its memory until the migration ends (see docs/security.md).
//! - `nimbus agent --insecure-migration` (benchmarks, trusted underlays) serves incoming
//!   migrations over plain TCP and, as a source, follows what the target serves. An agent
//!   that requires TLS refuses to send a VM in clear.

use super::tunnel::{OutgoingTunnel, TunnelTls};
use super::MigrationError;
use crate::instance::files::VmDir;
use nimbus_agent_api::{IncomingReady, MigrationCredential};
use nimbus_qemu::qmp::{ClientTls, MigrateParameters, ServerTls, TlsEndpoint};
use nimbus_qemu::Qmp;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Id of the `tls-creds-x509` object of a migration (source and target).
pub const CREDS_ID: &str = "migration-tls";
/// Id of the target's `authz-list` object naming the accepted source.
pub const AUTHZ_ID: &str = "migration-authz";
/// Directory of the VM where the credentials exist while QEMU loads them.
const FILES_DIR: &str = "migration-tls";
/// The RFC 7919 `ffdhe2048` group, for the server's `dh-params.pem`: without that file QEMU
/// generates fresh 2048-bit Diffie-Hellman parameters when the object is created, which
/// took 0.6 to 1.5 s of every migration's preparation (measured). A published group is as
/// safe (TLS 1.3 negotiates elliptic-curve key exchange anyway).
const FFDHE2048_PEM: &str = "\
-----BEGIN DH PARAMETERS-----\n\
MIIBCAKCAQEA//////////+t+FRYortKmq/cViAnPTzx2LnFg84tNpWp4TZBFGQz\n\
+8yTnc4kmz75fS/jY2MMddj2gbICrsRhetPfHtXV/WVhJDP1H18GbtCFY2VVPe0a\n\
87VXE15/V8k1mE8McODmi3fipona8+/och3xWKE2rec1MKzKT0g6eXq8CrGCsyT7\n\
YdEIqUuyyOP7uWrat2DX9GgdT0Kj3jlN9K5W7edjcrsZCwenyO4KbXCeAvzhzffi\n\
7MA0BM0oNC9hkXL+nOmFg/+OTxIy7vKBg8P+OxtMb61zO7X8vC7CIAXFjvGDfRaD\n\
ssbzSibBsu/6iGtCOGEoXJf//////////wIBAg==\n\
-----END DH PARAMETERS-----\n";

/// The host's identity, as QEMU needs it: its name, certificate, key and the cloud CA.
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

    /// The same, with QEMU given `issued` (this migration's certificate, see the module doc)
    /// instead of the host's key; unchanged without one.
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

    /// Target: loads the server credentials into QEMU and allows only `source_host`'s
    /// certificate; `None` when this agent serves migrations in clear.
    pub async fn serve(
        &self,
        qmp: &Qmp,
        dir: &VmDir,
        source_host: Option<&str>,
    ) -> Result<Option<ServerTls>, MigrationError> {
        let creds = match (&self.creds, self.insecure) {
            (Some(c), false) => c,
            _ => return Ok(None),
        };
        load_creds(qmp, dir, creds, TlsEndpoint::Server).await?;
        let authz = match source_host {
            Some(host) => {
                check_host_name(host)?;
                let _ = qmp.object_del(AUTHZ_ID).await;
                // Its certificate for this migration, or (an older controller or source agent)
                // its host certificate.
                let mut allowed = nimbus_pki::migration_subject_forms(host).to_vec();
                allowed.extend(nimbus_pki::host_subject_forms(host));
                qmp.object_add_authz_list(AUTHZ_ID, &allowed)
                    .await
                    .map_err(MigrationError::qmp("object-add authz-list"))?;
                Some(AUTHZ_ID.to_string())
            }
            None => {
                tracing::warn!(
                    "no source host named: any host certificate of the cloud CA may send this VM"
                );
                None
            }
        };
        Ok(Some(ServerTls {
            creds: CREDS_ID.to_string(),
            authz,
        }))
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
    /// target agent when it serves TLS (its first `channels` connections opened at once),
    /// else straight to its URI (checked by [`Self::connect`]: only an insecure agent
    /// sends in clear).
    pub fn outgoing_stream(
        &self,
        dir: &VmDir,
        target: &IncomingReady,
        target_host: Option<&str>,
        channels: usize,
    ) -> Result<(String, Option<OutgoingTunnel>), MigrationError> {
        if !target.tls {
            return Ok((target.migration_uri.clone(), None));
        }
        let host = target_host.ok_or_else(|| {
            MigrationError::Setup(
                "the controller named no target host: the target of a TLS migration cannot \
                 be checked (upgrade the controller)"
                    .into(),
            )
        })?;
        check_host_name(host)?;
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
        let tunnel = OutgoingTunnel::open(dir, address, host, &self.tunnel()?, channels)?;
        Ok((OutgoingTunnel::qemu_uri(), Some(tunnel)))
    }

    /// Source: checks the target's TLS matches this agent's rule, and loads the client
    /// credentials into QEMU when it mirrors the disk to a TLS target (`nbd`): the NBD
    /// connection is QEMU's own. `None` without a mirror or for a plain target, which
    /// only an insecure agent accepts.
    pub async fn connect(
        &self,
        qmp: &Qmp,
        dir: &VmDir,
        target: &IncomingReady,
        target_host: Option<&str>,
    ) -> Result<Option<ClientTls>, MigrationError> {
        if !target.tls {
            if !self.insecure {
                return Err(MigrationError::Setup(
                    "the target serves migrations without TLS (started with \
                     --insecure-migration): this host sends VMs over TLS only; start both \
                     agents with the same setting"
                        .into(),
                ));
            }
            return Ok(None);
        }
        let Some(creds) = &self.creds else {
            return Err(MigrationError::Setup(
                "the target requires TLS but this agent has no host certificate".into(),
            ));
        };
        if let Some(host) = target_host {
            check_host_name(host)?;
        }
        if target.nbd.is_none() {
            return Ok(None);
        }
        load_creds(qmp, dir, creds, TlsEndpoint::Client).await?;
        Ok(Some(ClientTls {
            creds: CREDS_ID.to_string(),
            hostname: target_host.map(str::to_string),
        }))
    }
}

/// The source's migration parameters `params` with its TLS settings: on with `tls`,
/// explicitly off without (a QEMU keeps the parameters of its previous migration).
pub fn client_parameters(
    mut params: MigrateParameters,
    tls: Option<&ClientTls>,
) -> MigrateParameters {
    params.tls_creds = Some(tls.map(|t| t.creds.clone()).unwrap_or_default());
    // Empty: the host of the migration URI must be one of the target certificate's names.
    params.tls_hostname = Some(tls.and_then(|t| t.hostname.clone()).unwrap_or_default());
    params
}

/// After the migration: the credentials leave QEMU's memory. Best effort.
pub async fn unload(qmp: &Qmp) {
    // The parameters would go on naming the deleted object, and any later migration of this
    // QEMU (a memory snapshot to a file) would fail looking for it.
    if let Err(e) = qmp
        .migrate_set_parameters(&client_parameters(MigrateParameters::default(), None))
        .await
    {
        tracing::debug!(error = %e, "cannot turn the migration's TLS parameters off");
    }
    for id in [AUTHZ_ID, CREDS_ID] {
        if let Err(e) = qmp.object_del(id).await {
            tracing::debug!(id, error = %e, "no TLS object to remove");
        }
    }
}

/// Replaces the VM's `tls-creds-x509` object by one of `creds` for `endpoint`; the files
/// exist only while QEMU loads them.
async fn load_creds(
    qmp: &Qmp,
    dir: &VmDir,
    creds: &HostTlsFiles,
    endpoint: TlsEndpoint,
) -> Result<(), MigrationError> {
    let files = dir.dir().join(FILES_DIR);
    let written = write_files(dir, &files, creds, endpoint);
    let loaded = match written {
        Ok(()) => {
            // An earlier migration of this QEMU left its object: a new one replaces it.
            let _ = qmp.object_del(CREDS_ID).await;
            // Relative to QEMU's working directory, its VM directory: the VM's user may not
            // search the directories above it. A QEMU started elsewhere (before nimbus set
            // its working directory) gets the absolute path.
            let relative = qmp
                .object_add_tls_creds(CREDS_ID, Path::new(FILES_DIR), endpoint)
                .await;
            match relative {
                Ok(()) => Ok(()),
                Err(_) => qmp
                    .object_add_tls_creds(CREDS_ID, &files, endpoint)
                    .await
                    .map_err(MigrationError::qmp("object-add tls-creds-x509")),
            }
        }
        Err(e) => Err(e),
    };
    if let Err(e) = std::fs::remove_dir_all(&files) {
        tracing::warn!(dir = %files.display(), error = %e, "cannot remove the TLS credentials given to QEMU");
    }
    loaded
}

/// `ca-cert.pem`, `<endpoint>-cert.pem`, `<endpoint>-key.pem` in `files` (mode 0700,
/// files 0600), owned by the VM's user.
fn write_files(
    dir: &VmDir,
    files: &Path,
    creds: &HostTlsFiles,
    endpoint: TlsEndpoint,
) -> Result<(), MigrationError> {
    use std::os::unix::fs::DirBuilderExt;
    let setup = |what: &str, p: &Path, e: &dyn std::fmt::Display| {
        MigrationError::Setup(format!("cannot {what} {}: {e}", p.display()))
    };
    // A directory left by an agent that died in the middle: never reuse it.
    let _ = std::fs::remove_dir_all(files);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(files)
        .map_err(|e| setup("create", files, &e))?;
    give(dir, files)?;
    let ep = endpoint.as_str();
    let mut contents: Vec<(PathBuf, &str)> = vec![
        (files.join("ca-cert.pem"), &creds.ca_pem),
        (files.join(format!("{ep}-cert.pem")), &creds.cert_pem),
        (files.join(format!("{ep}-key.pem")), &creds.key_pem),
    ];
    if endpoint == TlsEndpoint::Server {
        contents.push((files.join("dh-params.pem"), FFDHE2048_PEM));
    }
    for (path, text) in &contents {
        nimbus_pki::write_private(path, text.as_bytes()).map_err(|e| setup("write", path, &e))?;
        give(dir, path)?;
    }
    Ok(())
}

/// Gives `path` to the VM's user (when QEMU is confined).
fn give(dir: &VmDir, path: &Path) -> Result<(), MigrationError> {
    crate::confine::user::give_new_file(dir.dir(), path).map_err(|e| {
        MigrationError::Setup(format!(
            "cannot give {} to the VM's user: {}",
            path.display(),
            e.chain()
        ))
    })
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

    #[test]
    fn credential_files_are_private_and_named_for_the_endpoint() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = VmDir::new(tmp.path().to_path_buf());
        let out = tmp.path().join(FILES_DIR);
        write_files(&dir, &out, &files(), TlsEndpoint::Server).expect("write");
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&out), 0o700);
        for (name, text) in [
            ("ca-cert.pem", "CA"),
            ("server-cert.pem", "CERT"),
            ("server-key.pem", "KEY"),
            ("dh-params.pem", FFDHE2048_PEM),
        ] {
            let p = out.join(name);
            assert_eq!(std::fs::read_to_string(&p).expect("read"), text);
            assert_eq!(mode(&p), 0o600, "{name}");
        }
        // Written again (a stale directory): replaced, not merged.
        write_files(&dir, &out, &files(), TlsEndpoint::Client).expect("again");
        assert!(!out.join("server-key.pem").exists());
        assert!(out.join("client-key.pem").exists());
    }

    #[test]
    fn only_dns_labels_name_a_peer() {
        assert!(check_host_name("host-2").is_ok());
        for bad in ["", "h,OU=x", "H", "a=b", "x\\"] {
            assert!(check_host_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn qemu_gets_the_migration_key_not_the_host_key() {
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
