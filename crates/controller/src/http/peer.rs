//! Who is on the other end of the connection, for the handlers: the TCP peer's address
//! (as `ConnectInfo<SocketAddr>`, what authentication and throttling read) and the client
//! certificate's identity, when the TLS handshake verified one (what agents present).

use axum::extract::{ConnectInfo, Request};
use axum::middleware::Next;
use axum::response::Response;
use nimbus_pki::{PeerIdentity, PeerInfo};
use std::net::SocketAddr;
use std::sync::Arc;

/// The verified client certificate of the connection a request came on.
#[derive(Debug, Clone)]
pub struct ClientCert(pub Arc<PeerIdentity>);

/// Middleware: copies the connection's [`PeerInfo`] into the request's extensions.
pub async fn expose(
    ConnectInfo(peer): ConnectInfo<PeerInfo>,
    mut req: Request,
    next: Next,
) -> Response {
    req.extensions_mut()
        .insert(ConnectInfo::<SocketAddr>(peer.addr));
    if let Some(id) = peer.identity {
        req.extensions_mut().insert(ClientCert(id));
    }
    next.run(req).await
}

impl ClientCert {
    /// Host `name`'s identity at `addresses`, as the TLS listener records it once the
    /// handshake verified a certificate: for calling the router in-process (tests), where
    /// there is no handshake.
    pub fn host(name: &str, addresses: &[&str]) -> Self {
        Self(Arc::new(PeerIdentity {
            role: nimbus_pki::Role::Host,
            name: name.to_string(),
            serial: format!("test-{name}"),
            fingerprint: format!("test-{name}"),
            addresses: addresses.iter().map(|a| a.to_string()).collect(),
        }))
    }

    /// A controller's identity, as the TLS listener records it for another controller of
    /// the cloud: for calling the router in-process (tests).
    pub fn controller() -> Self {
        Self(Arc::new(PeerIdentity {
            role: nimbus_pki::Role::Controller,
            name: "nimbus-controller".to_string(),
            serial: "test-controller".to_string(),
            fingerprint: "test-controller".to_string(),
            addresses: vec!["127.0.0.1".to_string()],
        }))
    }
}
