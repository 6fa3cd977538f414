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
/// default flavors), registers in the `controllers` table, takes over the operations no live
/// controller owns, starts the background tasks and serves the API over HTTPS on every listen
/// address.
pub async fn run(
    config: ControllerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = App::open(config.clone()).await?;
    app.bootstrap().await?;
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
    for addr in &config.listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} (is another nimbus running?)"))?;
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
