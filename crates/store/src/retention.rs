//! Retention: what keeps the tables that grow with use from growing without bound.
//!
//! - Usage samples older than a retention are thinned, hour by hour, to the first and the last
//!   sample of each meter in each clock hour. Counters are cumulative and usage between two
//!   samples is spread evenly (see the controller's `usage::derive`), so for any hour
//!   boundary the samples on either side of it are still neighbours: usage over periods that
//!   start and end on whole hours, and every total since the beginning (the last sample of
//!   each meter), are exactly what they were. A sample resent later into a thinned hour is
//!   stored again and changes nothing either (its counters lie on the same line).
//! - Finished operations (with their steps) and audit entries are deleted after their own
//!   retention; an operation an instance or a snapshot still names is kept.

use crate::{time, Store, StoreError};
use chrono::{DateTime, Utc};
use nimbus_api::OperationState;
use sqlx::Row;

/// One clock hour in milliseconds.
pub const HOUR_MS: i64 = 3_600_000;

/// Finished operations no instance or snapshot names, last changed before `$1`.
const EXPIRED_OPERATIONS: &str = "SELECT o.id FROM operations o \
     WHERE o.state IN ($2, $3, $4) AND o.updated_at < $1 \
     AND NOT EXISTS (SELECT 1 FROM instances i WHERE i.operation_id = o.id) \
     AND NOT EXISTS (SELECT 1 FROM snapshots s WHERE s.operation_id = o.id)";

impl Store {
    /// Thins the usage samples of every whole hour before `before_ms` (rounded down to an
    /// hour) not thinned yet; answers how many samples were removed.
    pub async fn roll_up_usage(&self, before_ms: i64) -> Result<u64, StoreError> {
        let cutoff = before_ms.div_euclid(HOUR_MS) * HOUR_MS;
        let done: i64 = sqlx::query("SELECT done_until_ms FROM usage_rollup WHERE id = 1")
            .fetch_one(&self.pool)
            .await?
            .try_get("done_until_ms")?;
        let mut removed = 0;
        let mut next = self.first_sample_hour(done).await?;
        while let Some(hour) = next.filter(|h| *h < cutoff) {
            removed += self.thin_hour(hour).await?;
            sqlx::query(
                "UPDATE usage_rollup SET done_until_ms = $1 WHERE id = 1 AND done_until_ms < $1",
            )
            .bind(hour + HOUR_MS)
            .execute(&self.pool)
            .await?;
            next = self.first_sample_hour(hour + HOUR_MS).await?;
        }
        Ok(removed)
    }

    /// The hour of the first sample at or after `from_ms`.
    async fn first_sample_hour(&self, from_ms: i64) -> Result<Option<i64>, StoreError> {
        let row =
            sqlx::query("SELECT MIN(sampled_ms) AS t FROM usage_samples WHERE sampled_ms >= $1")
                .bind(from_ms)
                .fetch_one(&self.pool)
                .await?;
        let first: Option<i64> = row.try_get("t")?;
        Ok(first.map(|t| t.div_euclid(HOUR_MS) * HOUR_MS))
    }

    /// Removes every sample of the hour at `hour_ms` but the first and last of its meter there.
    async fn thin_hour(&self, hour_ms: i64) -> Result<u64, StoreError> {
        let bucket =
            "p.meter_id = usage_samples.meter_id AND p.sampled_ms >= $1 AND p.sampled_ms < $2";
        let sql = format!(
            "DELETE FROM usage_samples WHERE sampled_ms >= $1 AND sampled_ms < $2 \
             AND seq > (SELECT MIN(p.seq) FROM usage_samples p WHERE {bucket}) \
             AND seq < (SELECT MAX(p.seq) FROM usage_samples p WHERE {bucket})"
        );
        let done = sqlx::query(&sql)
            .bind(hour_ms)
            .bind(hour_ms + HOUR_MS)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// Deletes finished operations last changed before `before` (and their steps), except
    /// those an instance or a snapshot names; answers how many.
    pub async fn delete_finished_operations(
        &self,
        before: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let mut tx = self.begin().await?;
        let finished = [
            OperationState::Succeeded,
            OperationState::Failed,
            OperationState::Cancelled,
        ];
        let mut deleted = 0;
        for table in ["operation_steps", "operations"] {
            let column = if table == "operations" {
                "id"
            } else {
                "operation_id"
            };
            let sql = format!("DELETE FROM {table} WHERE {column} IN ({EXPIRED_OPERATIONS})");
            let mut q = sqlx::query(&sql).bind(time::to_text(before));
            for s in finished {
                q = q.bind(s.as_str());
            }
            deleted = q.execute(&mut *tx).await?.rows_affected();
        }
        tx.commit().await?;
        Ok(deleted)
    }

    /// Deletes audit entries older than `before`; answers how many.
    pub async fn delete_audit_before(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM audit_log WHERE at < $1")
            .bind(time::to_text(before))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}
