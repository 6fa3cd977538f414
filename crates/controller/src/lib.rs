//! The nimbus controller: the control plane of the cloud.
//!
//! - `http/`: thin axum handlers (parse, authenticate, call one `app/` function), the error
//!   mapping, OpenAPI, metrics, the console proxy;
//! - `app/`: the logic per resource (instances, snapshots, clones, flavors, images, hosts,
//!   operations, auth);
//! - `ops/`: one file per durable operation (instance create, start, stop, reboot,
//!   delete, migrate, clone; snapshot create, restore, delete) and the
//!   runner that starts and resumes them;
//! - `background/`: the reconciler that applies agents' reports and repairs drift, the
//!   autoscaler that keeps scaling groups at their desired size, and the other periodic
//!   tasks (see `background::task`: most run on one controller at a time).

pub mod app;
pub mod background;
pub mod config;
mod failpoint;
pub mod http;
pub mod ops;

pub use app::App;
pub use config::{ControllerConfig, Retention};

use anyhow::Context;
use std::future::Future;

/// Runs the controller until `shutdown` resolves: opens the store, bootstraps (admin token,
/// default flavors), binds every listen address, registers in the `controllers` table, takes
/// over the operations no live controller owns, starts the background tasks and serves the
/// API over HTTPS on every listen address.
///
/// The addresses are bound before the controller registers (and listened on after): one
/// that cannot serve (a busy port) exits without ever being listed as live or taking an
/// operation over, instead of leaving a live-looking row and leases for a TTL after it died.
pub async fn run(
    config: ControllerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = App::open(config.clone()).await?;
    app.bootstrap().await?;
    let addresses = bind(&config.listen)?;
    background::leases::register(&app).await?;
    ops::take_over(&app).await?;
    ops::settle_ended(&app).await?;
    use background::task::Runner;
    let tasks = [
        tokio::spawn(Runner::new(background::reconciler::Reconciler).run(app.clone())),
        tokio::spawn(Runner::new(background::autoscaler::Autoscaler).run(app.clone())),
        tokio::spawn(Runner::new(background::host_liveness::HostLiveness).run(app.clone())),
        tokio::spawn(
            Runner::new(background::firewall_sync::FirewallSync::default()).run(app.clone()),
        ),
        tokio::spawn(Runner::new(background::leases::LeaseKeeper).run(app.clone())),
        tokio::spawn(Runner::new(background::retention::RetentionTask).run(app.clone())),
        tokio::spawn(Runner::new(background::image_copies::ImageCopies).run(app.clone())),
        tokio::spawn(
            Runner::new(background::replica_copies::ReplicaCopies::default()).run(app.clone()),
        ),
        tokio::spawn(Runner::new(background::replication::Replication::default()).run(app.clone())),
    ];
    let router = http::router(app.clone());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut servers = Vec::new();
    for (addr, socket) in addresses {
        let listener = socket
            .listen(LISTEN_BACKLOG)
            .with_context(|| format!("cannot listen on {addr}"))?;
        let listener = nimbus_pki::TlsListener::new(listener, app.tls().server.clone(), None)
            .with_context(|| format!("cannot serve TLS on {addr}"))?;
        tracing::info!(%addr, ca = app.tls().ca.fingerprint(), "controller API listening (HTTPS)");
        let mut rx = stop_rx.clone();
        let router = router
            .clone()
            .layer(axum::middleware::from_fn(http::peer::expose));
        servers.push(tokio::spawn(async move {
            axum::serve(
                listener,
                router.into_make_service_with_connect_info::<nimbus_pki::PeerInfo>(),
            )
            .with_graceful_shutdown(async move {
                let _ = rx.wait_for(|stop| *stop).await;
            })
            .await
        }));
    }
    shutdown.await;
    tracing::info!("controller shutting down");
    let _ = stop_tx.send(true);
    for task in &tasks {
        task.abort();
    }
    if let Err(e) = app.store().unregister_controller(app.controller_id()).await {
        tracing::warn!(error = %e, "could not unregister; its operations move after their lease");
    }
    for s in servers {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), s).await;
    }
    Ok(())
}

/// Connections a listen address queues before the API accepts them (tokio's default).
const LISTEN_BACKLOG: u32 = 1024;

/// Binds (without listening yet) every address in `listen`, so a busy one is found before
/// the controller joins the others; connections are refused until it listens.
fn bind(
    listen: &[std::net::SocketAddr],
) -> anyhow::Result<Vec<(std::net::SocketAddr, tokio::net::TcpSocket)>> {
    listen
        .iter()
        .map(|addr| {
            let socket = if addr.is_ipv4() {
                tokio::net::TcpSocket::new_v4()
            } else {
                tokio::net::TcpSocket::new_v6()
            }
            .context("cannot make a socket")?;
            // As `TcpListener::bind` does: a restarted controller rebinds at once, past its
            // previous connections in TIME_WAIT.
            socket.set_reuseaddr(true)?;
            socket
                .bind(*addr)
                .with_context(|| format!("cannot listen on {addr} (is another nimbus running?)"))?;
            Ok((*addr, socket))
        })
        .collect()
}
