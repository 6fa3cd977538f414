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

/// Registers this controller (refused on SQLite when another one runs, and when it or
/// another live controller has a peer URL the others cannot reach).
pub async fn register(app: &App) -> Result<(), AppError> {
    let url = app.config().peer_url();
    let live = app.store().list_controllers(app.config().lease_ttl).await?;
    let others: Vec<String> = live.into_iter().map(|c| c.url).collect();
    if let Some(why) = unreachable_peer(&url, &others) {
        return Err(AppError::bad_request(why));
    }
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

/// Why controllers could not reach each other (they copy image bytes from one another): with
/// another live controller than one at `mine`, every peer URL must name an address, not
/// `0.0.0.0` or `::` (what `--listen 0.0.0.0:7700` alone gives). `None` when they can.
pub fn unreachable_peer(mine: &str, live: &[String]) -> Option<String> {
    let others: Vec<&String> = live.iter().filter(|u| u.as_str() != mine).collect();
    if others.is_empty() {
        return None;
    }
    let fix = "--advertise-url https://ADDRESS:PORT (an address of its machine the other                controllers reach, with its API port)";
    if !names_an_address(mine) {
        let list: Vec<&str> = others.iter().map(|u| u.as_str()).collect();
        return Some(format!(
            "this controller's peer URL {mine} is not an address the other controllers ({})              can reach: start it with {fix}, or --listen on such an address first",
            list.join(", ")
        ));
    }
    others.iter().find(|u| !names_an_address(u)).map(|bad| {
        format!(
            "the live controller at {bad} has no address the others can reach, so they              cannot copy image bytes from it: restart it with {fix}, then start this one"
        )
    })
}

/// Whether `url` is `https://HOST:PORT` with a host that is not unspecified.
fn names_an_address(url: &str) -> bool {
    let Ok(parsed) = reqwest::Url::parse(url) else {
        return false;
    };
    let host = parsed.host_str().unwrap_or_default();
    let ip = host.trim_start_matches('[').trim_end_matches(']');
    let unspecified = ip
        .parse::<std::net::IpAddr>()
        .is_ok_and(|a| a.is_unspecified());
    parsed.scheme() == "https" && !host.is_empty() && !unspecified
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

#[cfg(test)]
mod tests {
    use super::unreachable_peer;

    #[test]
    fn an_unspecified_peer_url_is_refused_once_there_are_several_controllers() {
        let one = ["https://0.0.0.0:7700".to_string()];
        assert_eq!(unreachable_peer("https://0.0.0.0:7700", &[]), None);
        assert_eq!(
            unreachable_peer("https://0.0.0.0:7700", &one),
            None,
            "its own earlier row is not another controller"
        );
        let ok = ["https://10.0.0.11:7700".to_string()];
        let e = unreachable_peer("https://0.0.0.0:7700", &ok).expect("refused");
        assert!(e.contains("--advertise-url https://ADDRESS:PORT"), "{e}");
        assert!(e.contains("10.0.0.11"), "{e}");
        let e = unreachable_peer("https://[::]:7700", &ok).expect("refused");
        assert!(e.contains("--advertise-url"), "{e}");
        let e = unreachable_peer("https://10.0.0.12:7700", &one).expect("refused");
        assert!(
            e.contains("the live controller at https://0.0.0.0:7700"),
            "{e}"
        );
        assert!(unreachable_peer("ctl2:7700", &ok).is_some(), "not a URL");
        assert_eq!(unreachable_peer("https://10.0.0.12:7700", &ok), None);
        assert_eq!(unreachable_peer("https://ctl2.example:7700", &ok), None);
    }
}
