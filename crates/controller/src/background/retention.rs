//! Retention: keeps the tables that grow with use bounded (see `nimbus_store` `retention`):
//! every `retention.interval`, raw usage samples older than `retention.usage_raw` are rolled
//! up to two per meter and hour (usage over whole hours unchanged), finished operations older
//! than `retention.operations` and audit entries older than `retention.audit` are deleted.
//!
//! Safe with several controllers: each step is idempotent (two passes at once delete the same
//! rows) and the roll-up's progress mark only moves forward.

use crate::app::App;
use chrono::{DateTime, Duration, Utc};
use nimbus_store::StoreError;

/// Runs forever, one pass every `retention.interval`.
pub async fn run(app: App) {
    let mut tick = tokio::time::interval(app.config().retention.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = pass(&app).await {
            tracing::warn!(error = %e, "retention pass failed");
        }
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
