//! Failure injection for end-to-end tests of the operations' undo paths: with
//! `NIMBUS_FAILPOINTS=migrate.after_prepare_target` the named step fails after its work was
//! done, as if its answer had been lost; with `NIMBUS_FAILPOINT_HOLD=drain.disable_host:8`
//! the named step stays in flight 8 s after its work (to kill or pause its controller there;
//! `drain.disable_host`, `snapshot.take`; `migrate.transfer` holds before its work, so the
//! target waits with its ports open).
//! One environment lookup per step; never set in production.

use nimbus_ops::StepError;

/// Fails (permanently) if `name` is among the injected failure points.
pub fn check(name: &str) -> Result<(), StepError> {
    match std::env::var("NIMBUS_FAILPOINTS") {
        Ok(list) if list.split(',').any(|p| p.trim() == name) => {
            tracing::warn!(failpoint = name, "injected failure");
            Err(StepError::permanent(format!("injected failure at {name}")))
        }
        _ => Ok(()),
    }
}

/// Keeps the step in flight for the seconds `NIMBUS_FAILPOINT_HOLD=name:secs` gives `name`.
pub async fn hold(name: &str) {
    let Ok(list) = std::env::var("NIMBUS_FAILPOINT_HOLD") else {
        return;
    };
    let secs = list.split(',').find_map(|p| {
        let (n, s) = p.trim().split_once(':')?;
        (n == name).then(|| s.parse::<u64>().ok()).flatten()
    });
    if let Some(secs) = secs {
        tracing::warn!(failpoint = name, secs, "holding the step in flight");
        tokio::time::sleep(std::time::Duration::from_secs(secs)).await;
    }
}
