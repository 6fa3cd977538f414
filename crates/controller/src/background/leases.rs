//! The lease keeper: this controller's heartbeat, the renewal of the leases of the operations
//! it runs (one statement for all), and the scan that takes over the operations of dead or
//! stalled controllers (see `nimbus_store`'s `leases` module for the protocol).
//!
//! Every quarter of the lease TTL: heartbeat and renew, then scan. An operation whose owner
//! died is resumed by a live controller within TTL + one tick.

use crate::app::{App, AppError};
use crate::background::task::{PassError, Run, Task};
use crate::ops;
use std::time::Duration;

/// How often to renew and scan: a quarter of the lease (three renewals may fail in a row
/// before the lease runs out), at least every 250 ms.
pub fn tick_of(ttl: Duration) -> Duration {
    (ttl / 4).max(Duration::from_millis(250))
}

/// Registers this controller (refused on SQLite when another one runs).
pub async fn register(app: &App) -> Result<(), AppError> {
    let url = app
        .config()
        .listen
        .first()
        .map(|a| format!("https://{a}"))
        .unwrap_or_default();
    app.store()
        .register_controller(
            app.controller_id(),
            &url,
            env!("CARGO_PKG_VERSION"),
            app.config().lease_ttl,
        )
        .await?;
    tracing::info!(controller_id = %app.controller_id(), %url, "controller registered");
    Ok(())
}

/// The lease keeper as a background task: every controller keeps its own heartbeat and
/// scans for operations to take over.
pub struct LeaseKeeper;

#[async_trait::async_trait]
impl Task for LeaseKeeper {
    const NAME: &'static str = "lease_keeper";
    const RUN: Run = Run::EveryController;

    fn interval(&self, app: &App) -> Duration {
        tick_of(app.config().lease_ttl)
    }

    async fn pass(&mut self, app: &App) -> Result<(), PassError> {
        let ttl = app.config().lease_ttl;
        if let Err(e) = app.store().heartbeat(app.controller_id(), ttl).await {
            tracing::warn!(error = %e, "heartbeat and lease renewal failed; operations and background tasks may move to another controller");
        }
        ops::take_over(app).await?;
        Ok(())
    }
}
