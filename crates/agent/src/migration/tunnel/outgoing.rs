//! Source side of the tunnel: a unix socket in the VM's directory that QEMU migrates (or
//! mirrors a disk) to, each of its connections carried over TLS to the target agent.
//!
//! The TLS connections QEMU will ask for (its main channel and one per multifd channel)
//! are opened when the tunnel is, while QEMU is still being set up: each connection QEMU
//! opens takes a ready one from the [`Pool`] instead of waiting for a TCP connect and a
//! handshake with certificate checks on both ends before its first byte moves. A
//! connection beyond those is opened when QEMU asks; one of the pool that QEMU never asks
//! for is closed with the tunnel (the target never hands it to its QEMU: see incoming.rs).

use super::{carry, refusal, Accept, ChannelTask, Channels, Stream, TunnelTls, OUTGOING_SOCKET};
use crate::instance::files::VmDir;
use crate::migration::MigrationError;
use nimbus_pki::rustls::pki_types::ServerName;
use nimbus_pki::tokio_rustls::TlsConnector;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpStream, UnixListener, UnixStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;

type TlsStream = nimbus_pki::tokio_rustls::client::TlsStream<TcpStream>;

/// The source's end of a migration's tunnel; dropping it closes every connection and
/// removes the socket.
pub struct OutgoingTunnel {
    socket: PathBuf,
    channels: Option<Channels>,
}

impl OutgoingTunnel {
    /// Opens the socket for `stream` that QEMU connects to in `dir`; each connection goes
    /// to `target` (`host:port`), which must prove it is host `target_host`. The first
    /// `ahead` connections (QEMU's main channel and its multifd channels) are opened now.
    pub fn open(
        dir: &VmDir,
        stream: Stream,
        target: String,
        target_host: &str,
        tls: &TunnelTls,
        ahead: usize,
    ) -> Result<Self, MigrationError> {
        let name = ServerName::try_from(target_host.to_string()).map_err(|e| {
            MigrationError::Setup(format!("{target_host:?} is not a host name: {e}"))
        })?;
        let socket = dir.dir().join(stream.outgoing_socket());
        // A socket left by an agent that died in the middle.
        let _ = std::fs::remove_file(&socket);
        let bind_at = super::SocketPath::new(dir.dir(), stream.outgoing_socket())?;
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
        let target = Arc::new(Target {
            connector: TlsConnector::from(tls.client.clone()),
            address: target,
            name,
            host: target_host.to_string(),
        });
        let accept = Outgoing {
            listener,
            peer: Arc::new(Peer {
                pool: Pool::fill(&target, ahead.min(super::MAX_CHANNELS)),
                target,
            }),
        };
        tunnel.channels = Some(Channels::spawn(accept));
        Ok(tunnel)
    }

    /// The URI QEMU migrates to through a [`Stream::Memory`] tunnel (relative to its
    /// working directory, the VM directory: the directories above may be closed to the
    /// VM's user).
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
    peer: Arc<Peer>,
}

/// Where QEMU's connections go, and those opened ahead for them.
struct Peer {
    target: Arc<Target>,
    pool: Pool,
}

/// TLS connections to the target opened before QEMU asks for them, oldest first; those
/// still here (or still opening) when the tunnel goes are closed.
struct Pool(Mutex<VecDeque<JoinHandle<Result<TlsStream, String>>>>);

impl Pool {
    /// Starts opening `n` connections to `target`.
    fn fill(target: &Arc<Target>, n: usize) -> Self {
        let opening = (0..n)
            .map(|_| {
                let target = target.clone();
                tokio::spawn(async move { connect(&target).await }.in_current_span())
            })
            .collect();
        Self(Mutex::new(opening))
    }

    /// The oldest connection opened ahead, if any is left.
    fn take(&self) -> Option<JoinHandle<Result<TlsStream, String>>> {
        match self.0.lock() {
            Ok(mut q) => q.pop_front(),
            Err(poisoned) => poisoned.into_inner().pop_front(),
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let opening = match self.0.get_mut() {
            Ok(q) => q,
            Err(poisoned) => poisoned.into_inner(),
        };
        for handle in opening.drain(..) {
            handle.abort();
        }
    }
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

/// One connection of QEMU: TLS to the target agent (one opened ahead when there is one
/// left), then the bytes both ways. On any failure QEMU's connection is closed, and its
/// migration fails.
async fn forward(peer: Arc<Peer>, qemu: UnixStream) {
    let target = &peer.target;
    let asked = Instant::now();
    let ahead = peer.pool.take();
    let pooled = ahead.is_some();
    let opened = match ahead {
        Some(handle) => match handle.await {
            Ok(Ok(tls)) => Ok(tls),
            Ok(Err(why)) => Err(why),
            Err(e) => Err(format!("opening ahead failed: {e}")),
        },
        None => connect(target).await,
    };
    let tls = match opened {
        Ok(tls) => tls,
        Err(why) => {
            tracing::warn!(target = target.address, why, "migration channel not opened");
            return;
        }
    };
    tracing::info!(
        target = target.address,
        pooled,
        waited_us = asked.elapsed().as_micros() as u64,
        "migration channel open"
    );
    match carry(qemu, tls).await {
        Ok((sent, received)) => {
            tracing::info!(
                target = target.address,
                sent,
                received,
                open_ms = asked.elapsed().as_millis() as u64,
                "migration channel closed"
            )
        }
        Err(e) => tracing::warn!(target = target.address, error = %e, "migration channel broken"),
    }
}

/// A TLS connection to the target agent, checked to be the named host.
async fn connect(target: &Target) -> Result<TlsStream, String> {
    let begun = Instant::now();
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
    let mut tls = tokio::time::timeout(super::HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| "TLS handshake timed out".to_string())??;
    // What QEMU wrote in one read (up to BUFFER) goes out sealed in one write.
    tls.get_mut().1.set_buffer_limit(Some(super::BUFFER));
    if let Some(why) = refusal(tls.get_ref().1, Some(&target.host)) {
        return Err(format!("target refused: {why}"));
    }
    tracing::debug!(
        target = target.address,
        handshake_us = begun.elapsed().as_micros() as u64,
        "migration TLS connection ready"
    );
    Ok(tls)
}
