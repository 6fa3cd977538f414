//! Target side: the VM directory and disk of a VM about to arrive, the endpoints its QEMU
//! opens while it waits (`-incoming defer`), and what is done once the guest resumed.
//!
//! The disk:
//! - `Shared { path }`: `disk.qcow2` is a symbolic link to `path` ([`VmDir::link_disk`]).
//!   The target never creates that file; deleting the VM with `keep_disk` (a failed or
//!   cancelled migration) removes the link only; deleting the instance for good removes the
//!   disk's directory when it is this host's shared storage (see [`crate::storage`]). (If
//!   `path` *is* this VM's `disk.qcow2`, a copy left here by an earlier migration away, it
//!   is used in place.)
//! - `Mirror`: a fresh overlay on the same base image with the same virtual size as the
//!   source's (both are made from the spec by [`crate::instance::disk::ensure_disk`]), where
//!   this host keeps disks (its shared storage, if any), exported writable over NBD for the
//!   source to mirror into (behind the agent's TLS tunnel, see `tunnel.rs`).

use super::endpoint::{free_port, tcp_uri};
use super::tls::{self, MigrationTls};
use super::tunnel::{IncomingTunnel, Stream, TunnelTls, INCOMING_SOCKET, NBD_INCOMING_SOCKET};
use super::{policy, MigrationError};
use crate::error::{Error, Result};
use crate::instance::disk;
use crate::instance::files::VmDir;
use crate::storage::DiskStore;
use nimbus_agent_api::{DiskTransfer, IncomingReady, MigrationPolicy, NbdTarget, VmSpec};
use nimbus_qemu::qmp::NbdAddress;
use nimbus_qemu::Qmp;
use std::path::Path;
use uuid::Uuid;

/// Id of the NBD export of the disk on the target.
pub const EXPORT_ID: &str = "migration-export";
/// How many ports are tried for the NBD server (a free port may be taken meanwhile).
const NBD_PORT_TRIES: usize = 5;

/// What the target's QEMU must open.
#[derive(Debug, Clone)]
pub struct IncomingPlan {
    /// The agent's address (host of its advertised URL).
    pub host: String,
    /// Serve the disk over NBD for a mirror.
    pub mirror: bool,
    pub policy: MigrationPolicy,
    /// The only host allowed to send the VM (over TLS).
    pub source_host: Option<String>,
    /// This migration's certificate for the target agent's tunnels (see `tls.rs`).
    pub tls_credential: Option<nimbus_agent_api::MigrationCredential>,
}

/// Creates the disk of an arriving VM in `dir` (see the module doc).
pub async fn prepare_disk(
    dir: &VmDir,
    spec: &VmSpec,
    transfer: &DiskTransfer,
    store: &DiskStore,
    cached: Option<&std::path::Path>,
) -> Result<()> {
    match transfer {
        DiskTransfer::Shared { path } => {
            // Only a disk of this VM on this host's shared storage: the request never points
            // the VM at another file (no `..`, nothing outside `<shared>/<id>/`).
            if let DiskStore::Shared(root) = store {
                let own = root.join(spec.id.to_string());
                let dots = path
                    .components()
                    .any(|c| matches!(c, std::path::Component::ParentDir));
                if dots || !path.starts_with(&own) {
                    return Err(Error::BadRequest(format!(
                        "shared disk {} is not this VM's on this host's shared storage ({})",
                        path.display(),
                        own.display()
                    )));
                }
            }
            // The source runs on it: it must be there (a relative path is refused by the link).
            if path.is_absolute() && !path.is_file() {
                return Err(Error::BadRequest(format!(
                    "shared disk {} does not exist on this host",
                    path.display()
                )));
            }
            dir.link_disk(path)
        }
        DiskTransfer::Mirror => {
            let own = dir.disk();
            if own.symlink_metadata().is_ok() {
                // Possibly a shared disk another host uses: never overwrite it.
                return Err(Error::Conflict(format!(
                    "a disk already exists at {}; it cannot receive a mirror",
                    own.display()
                )));
            }
            disk::ensure_disk(dir, spec, store, cached).await
        }
    }
}

/// Opens the endpoints on a QEMU launched with `-incoming defer`: capabilities, the NBD
/// export of the disk for a mirror, and the migration listener. With TLS (the default),
/// QEMU listens on unix sockets of its VM directory and the agents' TLS tunnels are in
/// front of them, one TCP port each; with `--insecure-migration`, QEMU's own TCP ports.
/// The tunnels must live until the guest runs here.
pub async fn listen(
    qmp: &Qmp,
    dir: &VmDir,
    plan: &IncomingPlan,
    export: &str,
    tls: &MigrationTls,
) -> Result<(IncomingReady, Vec<IncomingTunnel>), MigrationError> {
    set_capabilities(qmp, &plan.policy).await?;
    if let Some(params) = policy::target_parameters(&plan.policy) {
        qmp.migrate_set_parameters(&params)
            .await
            .map_err(MigrationError::qmp("migrate-set-parameters"))?;
    }
    let tunnel_tls = if tls.serves_tls() {
        Some(tunnel_settings(plan, tls)?)
    } else {
        None
    };
    let mut tunnels = Vec::new();
    let nbd = match (plan.mirror, &tunnel_tls) {
        (false, _) => None,
        (true, Some(settings)) => {
            // Relative to QEMU's working directory, the VM directory (see tunnel.rs).
            let socket = NbdAddress::Unix(Path::new(NBD_INCOMING_SOCKET));
            qmp.nbd_server_start(socket)
                .await
                .map_err(MigrationError::qmp("nbd-server-start"))?;
            export_disk(qmp, export).await?;
            let tunnel = open_tunnel(dir, plan, Stream::Disk, settings).await?;
            let nbd = NbdTarget {
                host: plan.host.clone(),
                port: tunnel.port(),
                export: export.to_string(),
            };
            tunnels.push(tunnel);
            Some(nbd)
        }
        (true, None) => Some(serve_disk_in_clear(qmp, &plan.host, export).await?),
    };
    let port = match &tunnel_tls {
        Some(settings) => {
            // Relative to QEMU's working directory, the VM directory (see tunnel.rs).
            qmp.migrate_incoming(&format!("unix:{INCOMING_SOCKET}"))
                .await
                .map_err(MigrationError::qmp("migrate-incoming"))?;
            let tunnel = open_tunnel(dir, plan, Stream::Memory, settings).await?;
            let port = tunnel.port();
            tunnels.push(tunnel);
            port
        }
        None => qemu_listens(qmp, &plan.host).await?,
    };
    let ready = IncomingReady {
        migration_uri: tcp_uri(&plan.host, port),
        nbd,
        tls: tunnel_tls.is_some(),
    };
    Ok((ready, tunnels))
}

/// The tunnels' TLS settings, once the source host the controller named is checked.
fn tunnel_settings(plan: &IncomingPlan, tls: &MigrationTls) -> Result<TunnelTls, MigrationError> {
    if let Some(host) = &plan.source_host {
        tls::check_host_name(host)?;
    } else {
        tracing::warn!(
            "no source host named: any host certificate of the cloud CA may send this VM"
        );
    }
    tls.tunnel()
}

/// The agent's tunnel for `stream` on a TCP port of `plan.host`, in front of QEMU's socket.
async fn open_tunnel(
    dir: &VmDir,
    plan: &IncomingPlan,
    stream: Stream,
    settings: &TunnelTls,
) -> Result<IncomingTunnel, MigrationError> {
    IncomingTunnel::open(
        &plan.host,
        dir.dir(),
        stream,
        settings,
        plan.source_host.clone(),
    )
    .await
}

/// QEMU listens in clear on a port of `host` (the kernel's choice); answers the port.
async fn qemu_listens(qmp: &Qmp, host: &str) -> Result<u16, MigrationError> {
    qmp.migrate_incoming(&tcp_uri(host, 0))
        .await
        .map_err(MigrationError::qmp("migrate-incoming"))?;
    let info = qmp
        .query_migrate()
        .await
        .map_err(MigrationError::qmp("query-migrate"))?;
    info.socket_address
        .unwrap_or_default()
        .iter()
        .find_map(|a| a.port.as_deref().and_then(|p| p.parse::<u16>().ok()))
        .ok_or_else(|| MigrationError::Setup("QEMU did not report its listening port".into()))
}

/// Both ends must agree on post-copy; the target enables it whenever the host can
/// (it needs userfaultfd), so the source alone decides whether to use it.
async fn set_capabilities(qmp: &Qmp, policy: &MigrationPolicy) -> Result<(), MigrationError> {
    let with_postcopy = policy::target_capabilities(policy, true);
    if let Err(e) = qmp.migrate_set_capabilities(&with_postcopy).await {
        tracing::info!(error = %e, "post-copy unavailable on this host");
        qmp.migrate_set_capabilities(&policy::target_capabilities(policy, false))
            .await
            .map_err(MigrationError::qmp("migrate-set-capabilities"))?;
    }
    Ok(())
}

/// Exports the disk, writable, on the NBD server QEMU runs.
async fn export_disk(qmp: &Qmp, export: &str) -> Result<(), MigrationError> {
    qmp.nbd_export_add(EXPORT_ID, super::disk_mirror::DISK_NODE, export, true)
        .await
        .map_err(MigrationError::qmp("block-export-add"))
}

/// `--insecure-migration`: the NBD server on a free TCP port of `host`, in clear.
async fn serve_disk_in_clear(
    qmp: &Qmp,
    host: &str,
    export: &str,
) -> Result<NbdTarget, MigrationError> {
    let mut last = None;
    for _ in 0..NBD_PORT_TRIES {
        let port = free_port(host)?;
        match qmp.nbd_server_start(NbdAddress::Tcp { host, port }).await {
            Ok(()) => {
                export_disk(qmp, export).await?;
                return Ok(NbdTarget {
                    host: host.to_string(),
                    port,
                    export: export.to_string(),
                });
            }
            Err(e) => last = Some(e),
        }
    }
    Err(MigrationError::Setup(format!(
        "cannot start the NBD server on {host}: {}",
        last.map_or_else(String::new, |e| e.to_string())
    )))
}

/// Name of the NBD export of VM `id`.
pub fn export_name(id: Uuid) -> String {
    format!("disk-{id}")
}

/// After the guest resumed here: close the NBD server (and with it the export), and make
/// the network learn the VM's new location. Best effort: each step is logged.
pub async fn finish(qmp: Qmp, mirror: bool) {
    if mirror {
        if let Err(e) = qmp.nbd_server_stop().await {
            tracing::warn!(error = %e, "cannot stop the NBD server");
        }
    }
    if let Err(e) = qmp.announce_self().await {
        tracing::warn!(error = %e, "announce-self failed");
    }
    tracing::info!("incoming migration finished");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VmSpec {
        crate::test_support::blank_spec(Uuid::nil(), Vec::new())
    }

    #[tokio::test]
    async fn shared_disks_are_linked_never_owned() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let shared = tmp.path().join("shared.qcow2");
        std::fs::write(&shared, b"disk").expect("write");
        let dir = VmDir::new(tmp.path().join("vm"));
        std::fs::create_dir_all(dir.dir()).expect("mkdir");
        let transfer = DiskTransfer::Shared {
            path: shared.clone(),
        };
        prepare_disk(&dir, &spec(), &transfer, &DiskStore::Local, None)
            .await
            .expect("link");
        assert_eq!(std::fs::read_link(dir.disk()).expect("link"), shared);
        assert_eq!(dir.disk_path(), shared);
        // Again (the same file): fine. A mirror onto it: refused.
        prepare_disk(&dir, &spec(), &transfer, &DiskStore::Local, None)
            .await
            .expect("idempotent");
        let err = prepare_disk(
            &dir,
            &spec(),
            &DiskTransfer::Mirror,
            &DiskStore::Local,
            None,
        )
        .await
        .expect_err("refused");
        assert_eq!(err.code(), "conflict");
        std::fs::remove_dir_all(dir.dir()).expect("remove");
        assert!(shared.is_file(), "the shared disk survives");
        let relative = DiskTransfer::Shared {
            path: "disk.qcow2".into(),
        };
        assert!(
            prepare_disk(&dir, &spec(), &relative, &DiskStore::Local, None)
                .await
                .is_err()
        );
        let absent = DiskTransfer::Shared {
            path: tmp.path().join("absent.qcow2"),
        };
        std::fs::create_dir_all(dir.dir()).expect("mkdir");
        let err = prepare_disk(&dir, &spec(), &absent, &DiskStore::Local, None)
            .await
            .expect_err("absent");
        assert_eq!(err.code(), "bad_request");
        assert!(dir.disk().symlink_metadata().is_err(), "nothing linked");
    }

    /// A migration request cannot point the VM at a file outside its own directory of the
    /// host's shared storage.
    #[tokio::test]
    async fn only_the_vm_s_own_shared_disk_is_linked() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("shared");
        let own = root.join(Uuid::nil().to_string());
        std::fs::create_dir_all(&own).expect("mkdir");
        std::fs::write(own.join("disk.qcow2"), b"disk").expect("write");
        std::fs::create_dir_all(root.join("other")).expect("mkdir");
        std::fs::write(root.join("other").join("disk.qcow2"), b"x").expect("write");
        let store = DiskStore::shared(&root).expect("shared storage");
        let dir = VmDir::new(tmp.path().join("vm"));
        std::fs::create_dir_all(dir.dir()).expect("mkdir");
        for bad in [
            root.join("other").join("disk.qcow2"),
            own.join("..").join("other").join("disk.qcow2"),
            tmp.path().join("elsewhere.qcow2"),
        ] {
            let t = DiskTransfer::Shared { path: bad.clone() };
            let err = prepare_disk(&dir, &spec(), &t, &store, None)
                .await
                .expect_err("refused");
            assert_eq!(err.code(), "bad_request", "{}", bad.display());
            assert!(dir.disk().symlink_metadata().is_err(), "nothing linked");
        }
        let t = DiskTransfer::Shared {
            path: own.join("disk.qcow2"),
        };
        prepare_disk(&dir, &spec(), &t, &store, None)
            .await
            .expect("own disk");
    }

    #[tokio::test]
    async fn a_mirror_target_with_shared_storage_makes_its_disk_there() {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(tmp.path().join("shared")).expect("mkdir");
        let store = DiskStore::shared(&tmp.path().join("shared")).expect("shared storage");
        let dir = VmDir::new(tmp.path().join("vm"));
        std::fs::create_dir_all(dir.dir()).expect("mkdir");
        prepare_disk(&dir, &spec(), &DiskTransfer::Mirror, &store, None)
            .await
            .expect("mirror target");
        let disk = store.shared_disk(spec().id).expect("shared disk");
        assert!(disk.is_file());
        assert_eq!(dir.disk_path(), disk);
        assert_eq!(
            store.owned_dir(spec().id, &dir),
            disk.parent().map(Into::into)
        );
    }
}
