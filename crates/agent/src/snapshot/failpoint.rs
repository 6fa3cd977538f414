//! Failure injection for tests of the checkpoint operations: with
//! `NIMBUS_FAILPOINTS=take.in_pause,restore.after_kill` the named steps fail as if the host
//! had. One environment lookup per step; never set in production.

use crate::error::{Error, Result};

/// Fails if `name` is among the injected failure points.
pub fn check(name: &str) -> Result<()> {
    match std::env::var("NIMBUS_FAILPOINTS") {
        Ok(list) if list.split(',').any(|p| p.trim() == name) => {
            Err(Error::Internal(format!("injected failure at {name}")))
        }
        _ => Ok(()),
    }
}
