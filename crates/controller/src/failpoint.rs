//! Failure injection for end-to-end tests of the operations' undo paths: with
//! `NIMBUS_FAILPOINTS=migrate.after_prepare_target` the named step fails after its work was
//! done, as if its answer had been lost. One environment lookup per step; never set in
//! production.

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
