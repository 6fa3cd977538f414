//! Failure injection for tests of the checkpoint operations: with
//! `NIMBUS_FAILPOINTS=take.in_pause,restore.after_kill` the named steps fail as if the host
//! had. One environment lookup per step; never set in production. [`check_host`] also reads
//! `<agent state>/failpoints` (names separated by commas or lines), so that an end-to-end
//! test can make one host of a running cloud fail at one step.

use crate::error::{Error, Result};
use std::path::Path;

/// Fails if `name` is among the injected failure points.
pub fn check(name: &str) -> Result<()> {
    match is_set(name) {
        true => injected(name),
        false => Ok(()),
    }
}

/// Whether `name` is among the injected failure points, for a step that does not fail but
/// goes the hard way (`take.disk_check_late`: a guest's disk writes looked at a second late).
pub fn is_set(name: &str) -> bool {
    std::env::var("NIMBUS_FAILPOINTS").is_ok_and(|list| names(&list).any(|p| p == name))
}

/// Like [`check`], also failing when `<state_dir>/failpoints` names `name`.
pub fn check_host(state_dir: &Path, name: &str) -> Result<()> {
    check(name)?;
    match std::fs::read_to_string(state_dir.join("failpoints")) {
        Ok(list) if names(&list).any(|p| p == name) => injected(name),
        _ => Ok(()),
    }
}

fn names(list: &str) -> impl Iterator<Item = &str> {
    list.split([',', '\n']).map(str::trim)
}

fn injected(name: &str) -> Result<()> {
    tracing::warn!(failpoint = name, "injected failure");
    Err(Error::Internal(format!("injected failure at {name}")))
}
