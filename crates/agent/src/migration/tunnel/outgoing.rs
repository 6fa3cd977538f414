//! Source side of the tunnel: a unix socket in the VM's directory that QEMU migrates to,
//! each of its connections carried over TLS to the target agent.

use super::{carry, refusal, Accept, ChannelTask, Channels, TunnelTls, OUTGOING_SOCKET};
use crate::instance::files::VmDir;
use crate::migration::MigrationError;
use nimbus_pki::rustls::pki_types::ServerName;
use nimbus_pki::tokio_rustls::TlsConnector;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpStream, UnixListener, UnixStream};

/// The source's end of a migration's tunnel; dropping it closes every connection and
/// removes the socket.
pub struct OutgoingTunnel {
    socket: PathBuf,
    channels: Option<Channels>,
}

impl OutgoingTunnel {
    /// Opens the socket QEMU migrates to in `dir`; each connection goes to `target`
    /// (`host:port`), which must prove it is host `target_host`.
    pub fn open(
        dir: &VmDir,
        target: String,
        target_host: &str,
        tls: &TunnelTls,
    ) -> Result<Self, MigrationError> {
        let name = ServerName::try_from(target_host.to_string()).map_err(|e| {
            MigrationError::Setup(format!("{target_host:?} is not a host name: {e}"))
        })?;
        let socket = dir.dir().join(OUTGOING_SOCKET);
        // A socket left by an agent that died in the middle.
        let _ = std::fs::remove_file(&socket);
        let bind_at = super::SocketPath::new(dir.dir(), OUTGOING_SOCKET)?;
        let listener = UnixListener::bind(bind_at.path()).map_err(|e| {
            MigrationError::Setup(format!("cannot create {}: {e}", socket.display()))
        })?;
        let mut tunnel = Self {
            socket,
            channels: None,
        };
        // Only the VM's (confined) QEMU may connect: the directory is its user's.
        crate::confine::user::give_new_file(dir.dir(), &tunnel.socket).map_err(|e| {
            MigrationError::Setup(format!(
                "cannot give {} to the VM's user: {}",
                tunnel.socket.display(),
                e.chain()
            ))
        })?;
        let accept = Outgoing {
            listener,
            peer: Arc::new(Target {
                connector: TlsConnector::from(tls.client.clone()),
                address: target,
                name,
                host: target_host.to_string(),
            }),
        };
        tunnel.channels = Some(Channels::spawn(accept));
        Ok(tunnel)
    }

    /// The URI QEMU migrates to (relative to its working directory, the VM directory:
    /// the directories above may be closed to the VM's user).
    pub fn qemu_uri() -> String {
        format!("unix:{OUTGOING_SOCKET}")
    }

    /// QEMU completed: lets the channels deliver what they still hold (bounded by
    /// `limit`), then closes the tunnel.
    pub async fn finish(mut self, limit: Duration) {
        if let Some(channels) = self.channels.take() {
            channels.close(limit).await;
        }
    }
}

impl Drop for OutgoingTunnel {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.socket) {
            tracing::debug!(socket = %self.socket.display(), error = %e, "no migration socket to remove");
        }
    }
}

struct Outgoing {
    listener: UnixListener,
    peer: Arc<Target>,
}

/// Where every connection goes, and who must answer there.
struct Target {
    connector: TlsConnector,
    address: String,
    name: ServerName<'static>,
    host: String,
}

impl Accept for Outgoing {
    async fn next(&mut self) -> Option<ChannelTask> {
        match self.listener.accept().await {
            Ok((qemu, _)) => Some(Box::pin(forward(self.peer.clone(), qemu))),
            Err(e) => {
                tracing::warn!(error = %e, "cannot accept QEMU's migration connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                None
            }
        }
    }
}

/// One connection of QEMU: TLS to the target agent, then the bytes both ways. On any
/// failure QEMU's connection is closed, and its migration fails.
async fn forward(target: Arc<Target>, qemu: UnixStream) {
    let tls = match connect(&target).await {
        Ok(tls) => tls,
        Err(why) => {
            tracing::warn!(target = target.address, why, "migration channel not opened");
            return;
        }
    };
    tracing::info!(target = target.address, "migration channel open");
    match carry(qemu, tls).await {
        Ok((sent, received)) => {
            tracing::info!(
                target = target.address,
                sent,
                received,
                "migration channel closed"
            )
        }
        Err(e) => tracing::warn!(target = target.address, error = %e, "migration channel broken"),
    }
}

async fn connect(
    target: &Target,
) -> Result<nimbus_pki::tokio_rustls::client::TlsStream<TcpStream>, String> {
    let handshake = async {
        let tcp = TcpStream::connect(&target.address)
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        target
            .connector
            .connect(target.name.clone(), tcp)
            .await
            .map_err(|e| format!("TLS handshake failed: {e}"))
    };
    let tls = tokio::time::timeout(super::HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| "TLS handshake timed out".to_string())??;
    if let Some(why) = refusal(tls.get_ref().1, Some(&target.host)) {
        return Err(format!("target refused: {why}"));
    }
    Ok(tls)
}
