//! A TLS listener for `axum::serve`: handshakes run in their own tasks (bounded in time),
//! so a slow or hostile client never holds up the others; the peer's certificate identity
//! travels with the connection ([`PeerInfo`], read with `ConnectInfo<PeerInfo>`).

use crate::{PeerIdentity, Role};
use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// How long a client may take to complete its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Who is on the other end of a connection.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub addr: SocketAddr,
    /// The identity of the client certificate, when one was presented (and verified).
    pub identity: Option<Arc<PeerIdentity>>,
}

/// Accepts TLS connections (see the module doc).
pub struct TlsListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, PeerInfo)>,
    acceptor: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    /// Serves TLS on `tcp` with `config`. With `only`, connections whose client certificate
    /// is not of that role are closed after the handshake (and logged with the reason).
    pub fn new(
        tcp: TcpListener,
        config: Arc<rustls::ServerConfig>,
        only: Option<Role>,
    ) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        let acceptor = tokio::spawn(accept_loop(tcp, TlsAcceptor::from(config), only, tx));
        Ok(Self {
            local,
            ready,
            acceptor,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

async fn accept_loop(
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    only: Option<Role>,
    tx: mpsc::Sender<(TlsStream<TcpStream>, PeerInfo)>,
) {
    loop {
        let (stream, addr) = match tcp.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors and the like: wait instead of spinning.
                tracing::warn!(error = %e, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            if let Some(conn) = handshake(acceptor, stream, addr, only).await {
                let _ = tx.send(conn).await;
            }
        });
    }
}

async fn handshake(
    acceptor: TlsAcceptor,
    stream: TcpStream,
    addr: SocketAddr,
    only: Option<Role>,
) -> Option<(TlsStream<TcpStream>, PeerInfo)> {
    let _ = stream.set_nodelay(true);
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::warn!(peer = %addr, error = %e, "TLS handshake refused");
            return None;
        }
        Err(_) => {
            tracing::warn!(peer = %addr, "TLS handshake timed out");
            return None;
        }
    };
    let identity = match tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
        None => None,
        Some(der) => match PeerIdentity::from_der(der) {
            Ok(id) => Some(Arc::new(id)),
            Err(e) => {
                tracing::warn!(peer = %addr, error = %e, "connection refused: bad client certificate");
                return None;
            }
        },
    };
    if let Some(role) = only {
        if identity.as_ref().map(|i| i.role) != Some(role) {
            tracing::warn!(
                peer = %addr,
                presented = ?identity.as_ref().map(|i| (i.role, i.name.clone())),
                "connection refused: only a {} certificate of this cloud may call here",
                role.unit()
            );
            return None;
        }
    }
    Some((tls, PeerInfo { addr, identity }))
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = PeerInfo;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept task is gone (it never ends by itself): serve nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(PeerInfo {
            addr: self.local,
            identity: None,
        })
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for PeerInfo {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        stream.remote_addr().clone()
    }
}
