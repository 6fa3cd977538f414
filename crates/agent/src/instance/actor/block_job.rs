//! A QEMU block job (a `block-stream`, an active `block-commit`) followed to its end,
//! bounded: a failed job's I/O status is its error.

use crate::error::{Error, Result};
use nimbus_qemu::Qmp;
use std::time::Duration;

/// How a job comes to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ends {
    /// By itself once its work is done (`block-stream`).
    Itself,
    /// Once ready, by our `job-complete` (an active commit: the switch to its base).
    Completed,
}

/// A fresh job id: `kind` and 8 hex digits.
pub(super) fn new_id(kind: &str) -> String {
    format!("{kind}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

/// Follows job `job` (auto-dismissed: gone once done) until it is gone, completing it once
/// ready when it [`Ends::Completed`]. `what` names it in errors.
pub(super) async fn run(
    qmp: &Qmp,
    job: &str,
    ends: Ends,
    limit: Duration,
    what: &str,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut completing = false;
    loop {
        let jobs = qmp.query_block_jobs().await?;
        match jobs.iter().find(|j| j.device == job) {
            None => return Ok(()),
            Some(j) if j.io_status.as_deref().is_some_and(|s| s != "ok") => {
                return Err(Error::QemuFailed(format!(
                    "{what} failed ({})",
                    j.io_status.as_deref().unwrap_or("")
                )))
            }
            Some(j) if j.ready && ends == Ends::Completed && !completing => {
                qmp.job_complete(job).await?;
                completing = true;
            }
            Some(_) => {}
        }
        if tokio::time::Instant::now() > deadline {
            return Err(Error::Timeout(format!("{what} took over {limit:?}")));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
