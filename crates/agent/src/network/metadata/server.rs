//! The accept loop of one network's metadata server: HTTP/1 only, with half-closed
//! connections answered (`printf 'GET ...' | nc` shuts its sending side before the answer
//! arrives; hyper's default would drop such a request), a bound on the request head's time,
//! and a bound on concurrent connections (a guest cannot make the agent hold more).

use super::http::{router, Service};
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Connections served at once per network and host; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 64;
/// How long a client may take to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one connection may last (requests are tiny; answers too).
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `service` on `listener` until the task is aborted.
pub async fn run(listener: TcpListener, service: Service) {
    let app = router(service.clone());
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::debug!(vni = service.vni, error = %e, "metadata accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let app = app.clone().layer(axum::Extension(ConnectInfo(peer)));
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .half_close(true)
                .keep_alive(false)
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
            if let Ok(Err(e)) = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await {
                tracing::debug!(%peer, error = %e, "metadata connection ended");
            }
            drop(permit);
        });
    }
}
