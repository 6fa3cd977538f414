//! Target side of the tunnel: a TLS port opened for one migration, each authenticated
//! connection carried to the waiting QEMU's unix socket.
//!
//! A connection of the migration stream reaches QEMU only once its first bytes arrived:
//! the source opens its connections ahead of QEMU's (see outgoing.rs), and QEMU, which
//! tells its channels apart by their first bytes, would wait on an empty one (a connection
//! the source opened but QEMU never used is closed with the tunnel without QEMU seeing it).
//! A connection to the NBD server of a mirrored disk reaches QEMU at once: the server
//! speaks first.

use super::gather::Gather;
use super::{
    carry, refusal, Accept, ChannelTask, Channels, SocketPath, Stream, TunnelTls, BUFFER,
    HANDSHAKE_TIMEOUT,
};
use crate::migration::MigrationError;
use nimbus_pki::tokio_rustls::TlsAcceptor;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::time::Instant;

/// The first byte of a TLS record carrying a handshake message.
const TLS_HANDSHAKE: u8 = 0x16;

/// The target's end of a migration's tunnel; dropping it closes every connection.
pub struct IncomingTunnel {
    port: u16,
    channels: Channels,
}

impl IncomingTunnel {
    /// Listens on a port of `host` (the kernel's choice) for `source_host`'s connections
    /// of `stream`, carried to QEMU's unix socket for it in its VM directory `vm_dir`.
    pub async fn open(
        host: &str,
        vm_dir: &Path,
        stream: Stream,
        tls: &TunnelTls,
        source_host: Option<String>,
    ) -> Result<Self, MigrationError> {
        let qemu_socket = SocketPath::new(vm_dir, stream.incoming_socket())?;
        let listener = TcpListener::bind((host, 0))
            .await
            .map_err(|e| MigrationError::Setup(format!("cannot listen on {host}: {e}")))?;
        let port = listener
            .local_addr()
            .map_err(|e| MigrationError::Setup(format!("cannot read a bound port: {e}")))?
            .port();
        let accept = Incoming {
            listener,
            peer: Arc::new(Peer {
                acceptor: TlsAcceptor::from(tls.server.clone()),
                source_host,
                qemu_socket,
                stream,
            }),
        };
        Ok(Self {
            port,
            channels: Channels::spawn(accept),
        })
    }

    /// The TCP port the source connects to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The guest runs here: no new connection is taken; those open (post-copy still moves
    /// pages) end by themselves, or are closed after `limit`.
    pub fn close_when_done(self, limit: Duration) {
        tokio::spawn(self.channels.close(limit));
    }
}

struct Incoming {
    listener: TcpListener,
    peer: Arc<Peer>,
}

/// What every connection of the tunnel is checked against and carried to.
struct Peer {
    acceptor: TlsAcceptor,
    source_host: Option<String>,
    qemu_socket: SocketPath,
    stream: Stream,
}

impl Accept for Incoming {
    async fn next(&mut self) -> Option<ChannelTask> {
        match self.listener.accept().await {
            Ok((tcp, addr)) => Some(Box::pin(serve(self.peer.clone(), tcp, addr))),
            Err(e) => {
                // Out of descriptors and the like: wait instead of spinning.
                tracing::warn!(error = %e, "cannot accept a migration connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                None
            }
        }
    }
}

/// Most bytes read before QEMU's socket is connected.
const FIRST_READ: usize = 64 * 1024;

/// One connection: TLS with the source host, then the bytes to and from QEMU (connected
/// on the connection's first bytes, or at once when QEMU speaks first).
async fn serve(peer: Arc<Peer>, tcp: TcpStream, addr: SocketAddr) {
    let accepted = Instant::now();
    let _ = tcp.set_nodelay(true);
    if let Err(why) = starts_with_handshake(&tcp).await {
        tracing::warn!(peer = %addr, why, "migration connection refused");
        return;
    }
    let tcp = tokio::io::BufReader::with_capacity(BUFFER, tcp);
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, peer.acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::warn!(peer = %addr, error = %e, "migration TLS handshake refused");
            return;
        }
        Err(_) => {
            tracing::warn!(peer = %addr, "migration TLS handshake timed out");
            return;
        }
    };
    if let Some(why) = refusal(tls.get_ref().1, peer.source_host.as_deref()) {
        tracing::warn!(peer = %addr, why, "migration connection refused");
        return;
    }
    let mut tls = Gather::new(tls);
    let handshake_us = accepted.elapsed().as_micros() as u64;
    let first = if peer.stream.qemu_speaks_first() {
        Vec::new()
    } else {
        match first_bytes(&mut tls).await {
            Some(first) => first,
            None => {
                tracing::debug!(peer = %addr, "migration connection closed unused");
                return;
            }
        }
    };
    let waited_us = accepted.elapsed().as_micros() as u64;
    let mut qemu = match UnixStream::connect(peer.qemu_socket.path()).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(socket = %peer.qemu_socket.path().display(), error = %e, "cannot reach the waiting QEMU");
            return;
        }
    };
    if let Err(e) = qemu.write_all(&first).await {
        tracing::warn!(peer = %addr, error = %e, "migration channel broken");
        return;
    }
    let stream = peer.stream;
    tracing::info!(peer = %addr, ?stream, handshake_us, waited_us, "migration channel open");
    match carry(tls, qemu).await {
        Ok((received, sent)) => tracing::info!(
            peer = %addr,
            ?stream,
            received = received + first.len() as u64,
            sent,
            open_ms = accepted.elapsed().as_millis() as u64,
            "migration channel closed"
        ),
        Err(e) => tracing::warn!(peer = %addr, ?stream, error = %e, "migration channel broken"),
    }
}

/// The first bytes the source sends; `None` when it closes the connection first (one it
/// opened ahead and did not need).
async fn first_bytes<S: tokio::io::AsyncRead + Unpin>(tls: &mut S) -> Option<Vec<u8>> {
    let mut first = vec![0u8; FIRST_READ];
    match tls.read(&mut first).await {
        Ok(0) | Err(_) => None,
        Ok(n) => {
            first.truncate(n);
            Some(first)
        }
    }
}

/// A client must open with a TLS handshake: a plain one (a migration stream in clear,
/// an NBD client) is closed before rustls could answer it with an alert.
async fn starts_with_handshake(tcp: &TcpStream) -> Result<(), String> {
    let mut first = [0u8; 1];
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, tcp.peek(&mut first)).await {
        Ok(Ok(1)) if first[0] == TLS_HANDSHAKE => Ok(()),
        Ok(Ok(1)) => Err(format!("not TLS (first byte {:#04x})", first[0])),
        Ok(Ok(_)) => Err("closed before sending".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("sent nothing".into()),
    }
}
