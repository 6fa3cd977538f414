//! Retention: keeps the tables that grow with use bounded (see `nimbus_store` `retention`):
//! every `retention.interval`, raw usage samples older than `retention.usage_raw` are rolled
//! up to two per meter and hour (usage over whole hours unchanged), finished operations older
//! than `retention.operations` and audit entries older than `retention.audit` are deleted.
//!
//! Safe with several controllers: one runs it at a time (its lease), and each step is
//! idempotent anyway (two passes at once delete the same rows; the roll-up's progress mark
//! only moves forward).

use crate::app::App;
use crate::background::task::{PassError, Run, Task};
use chrono::{DateTime, Duration, Utc};
use nimbus_store::StoreError;

/// Retention as a background task: one controller at a time (its steps are idempotent
/// anyway: the lease only saves the others the work), every `retention.interval`.
pub struct RetentionTask;

#[async_trait::async_trait]
impl Task for RetentionTask {
    const NAME: &'static str = "retention";
    const RUN: Run = Run::OneController;

    fn interval(&self, app: &App) -> std::time::Duration {
        app.config().retention.interval
    }

    async fn pass(&mut self, app: &App) -> Result<(), PassError> {
        pass(app).await?;
        Ok(())
    }
}

/// What one pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Removed {
    pub usage_samples: u64,
    pub operations: u64,
    pub audit_entries: u64,
}

/// One pass: roll up usage, delete old operations and audit entries.
pub async fn pass(app: &App) -> Result<Removed, StoreError> {
    let keep = app.config().retention;
    let now = Utc::now();
    // A retention too long to subtract keeps everything.
    let ago = |d: std::time::Duration| {
        Duration::from_std(d)
            .ok()
            .and_then(|d| now.checked_sub_signed(d))
            .unwrap_or(DateTime::<Utc>::MIN_UTC)
    };
    let removed = Removed {
        usage_samples: app
            .store()
            .roll_up_usage(ago(keep.usage_raw).timestamp_millis())
            .await?,
        operations: app
            .store()
            .delete_finished_operations(ago(keep.operations))
            .await?,
        audit_entries: app.store().delete_audit_before(ago(keep.audit)).await?,
    };
    if removed != Removed::default() {
        tracing::info!(
            usage_samples = removed.usage_samples,
            operations = removed.operations,
            audit_entries = removed.audit_entries,
            "retention: old rows rolled up or deleted"
        );
    }
    Ok(removed)
}
