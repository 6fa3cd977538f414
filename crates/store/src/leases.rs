//! Controllers and who owns which operation: leases in the database's clock, fenced by epochs.
//!
//! ```text
//!   new operation ──claim (owner NULL)──▶ owned: owner = C, epoch = e, lease_until = now + ttl
//!        ▲                                    │  C renews all its leases in one statement
//!        │                                    │  every log write: ... WHERE id = op AND epoch = e
//!        └──── takeover (lease expired, or C ◀┘  (zero rows: the lease is lost, C stops)
//!              not a live controller): owner = D, epoch = e + 1
//! ```
//! Every time that decides ownership is the database's clock (`now_ms`), so controllers with
//! skewed clocks agree. A paused owner that wakes up after a takeover can write nothing: the
//! fence compares its epoch with the row's, under the row's lock.

use crate::instances::parse_uuid;
use crate::operations::{load_snapshot, step_times};
use crate::{time, Store, StoreError};
use async_trait::async_trait;
use nimbus_api::{OperationState, StepState};
use nimbus_ops::{LogError, LogSnapshot, OperationLog};
use serde_json::Value;
use sqlx::{Any, Row};
use std::time::Duration;
use uuid::Uuid;

/// A live (or recently live) controller.
#[derive(Debug, Clone, PartialEq)]
pub struct ControllerRecord {
    pub id: Uuid,
    pub url: String,
    pub version: String,
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// Milliseconds since its last heartbeat, by the database's clock.
    pub heartbeat_age_ms: u64,
    /// Operations it owns that have not ended.
    pub operations: u64,
}

/// An operation this controller now owns, with the epoch that fences its writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OperationClaim {
    pub operation: Uuid,
    pub epoch: i64,
}

const UNFINISHED: &str = "state IN ('running', 'unwinding')";

fn ms(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

impl Store {
    /// The database's clock, in milliseconds since the Unix epoch, as an SQL expression.
    pub(crate) fn now_ms(&self) -> &'static str {
        if self.postgres {
            "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)"
        } else {
            "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)"
        }
    }

    /// Several controllers may share this database (PostgreSQL).
    pub fn is_shared(&self) -> bool {
        self.postgres
    }

    /// Registers controller `id` at `url`. A row of an earlier run at the same `url` is
    /// replaced (that process is gone: its address is ours now). On SQLite, refuses when
    /// another controller is alive: SQLite serves one controller.
    pub async fn register_controller(
        &self,
        id: Uuid,
        url: &str,
        version: &str,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let now = self.now_ms();
        sqlx::query("DELETE FROM controllers WHERE url = $1")
            .bind(url)
            .execute(&self.pool)
            .await?;
        if !self.postgres {
            let sql = format!("SELECT url FROM controllers WHERE heartbeat_ms >= {now} - $1");
            let other = sqlx::query(&sql)
                .bind(ms(ttl))
                .fetch_optional(&self.pool)
                .await?;
            if let Some(r) = other {
                let url: String = r.try_get("url")?;
                return Err(StoreError::Conflict(format!(
                    "another controller ({url}) uses this SQLite database; SQLite serves one \
                     controller: to run several, give them all one PostgreSQL database \
                     (--database-url postgres://...)"
                )));
            }
        }
        let sql = format!(
            "INSERT INTO controllers (id, url, version, started_at, heartbeat_ms) \
             VALUES ($1, $2, $3, $4, {now})"
        );
        sqlx::query(&sql)
            .bind(id.to_string())
            .bind(url)
            .bind(version)
            .bind(time::now())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Removes a controller's row (clean shutdown); its operations are taken over at once.
    pub async fn unregister_controller(&self, id: Uuid) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM controllers WHERE id = $1")
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Heartbeat of controller `id`, and renewal of all its leases (operations in one
    /// statement, background tasks in another);
    /// `NotFound` if its row is gone (a later run at its address replaced it).
    pub async fn heartbeat(&self, id: Uuid, ttl: Duration) -> Result<(), StoreError> {
        let now = self.now_ms();
        let r = sqlx::query(&format!(
            "UPDATE controllers SET heartbeat_ms = {now} WHERE id = $1"
        ))
        .bind(id.to_string())
        .execute(&self.pool)
        .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::not_found("controller", id.to_string()));
        }
        sqlx::query(&format!(
            "UPDATE operations SET lease_until_ms = {now} + $1 WHERE owner = $2 AND {UNFINISHED}"
        ))
        .bind(ms(ttl))
        .bind(id.to_string())
        .execute(&self.pool)
        .await?;
        self.renew_tasks(id, ttl).await
    }

    /// Controllers whose heartbeat is younger than `ttl`, oldest first.
    pub async fn list_controllers(
        &self,
        ttl: Duration,
    ) -> Result<Vec<ControllerRecord>, StoreError> {
        let now = self.now_ms();
        let sql = format!(
            "SELECT c.id, c.url, c.version, c.started_at, {now} - c.heartbeat_ms AS age, \
             (SELECT COUNT(*) FROM operations o WHERE o.owner = c.id AND o.{UNFINISHED}) AS n \
             FROM controllers c WHERE c.heartbeat_ms >= {now} - $1 ORDER BY c.started_at"
        );
        let rows = sqlx::query(&sql)
            .bind(ms(ttl))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(ControllerRecord {
                    id: parse_uuid(&r.try_get::<String, _>("id")?)?,
                    url: r.try_get("url")?,
                    version: r.try_get("version")?,
                    started_at: time::parse(&r.try_get::<String, _>("started_at")?)?,
                    heartbeat_age_ms: r.try_get::<i64, _>("age")?.max(0) as u64,
                    operations: r.try_get::<i64, _>("n")?.max(0) as u64,
                })
            })
            .collect()
    }

    /// Claims a new operation nobody owns yet; `None` if another controller got it first.
    pub async fn claim_operation(
        &self,
        op: Uuid,
        me: Uuid,
        ttl: Duration,
    ) -> Result<Option<OperationClaim>, StoreError> {
        let sql = format!(
            "UPDATE operations SET owner = $1, epoch = epoch + 1, lease_until_ms = {} + $2 \
             WHERE id = $3 AND owner IS NULL AND {UNFINISHED} RETURNING id, epoch",
            self.now_ms()
        );
        let row = sqlx::query(&sql)
            .bind(me.to_string())
            .bind(ms(ttl))
            .bind(op.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(claim_from_row).transpose()
    }

    /// Takes over up to `limit` unfinished operations that nobody owns, whose lease expired,
    /// or whose owner is no live controller; bumps their epoch (so their earlier owner can no
    /// longer write). On PostgreSQL, rows another controller is taking are skipped.
    pub async fn take_over_operations(
        &self,
        me: Uuid,
        ttl: Duration,
        limit: u32,
    ) -> Result<Vec<OperationClaim>, StoreError> {
        let now = self.now_ms();
        let skip_locked = if self.postgres {
            "FOR UPDATE SKIP LOCKED"
        } else {
            ""
        };
        let sql = format!(
            "UPDATE operations SET owner = $1, epoch = epoch + 1, lease_until_ms = {now} + $2 \
             WHERE id IN (SELECT id FROM operations WHERE {UNFINISHED} AND (owner IS NULL \
             OR lease_until_ms < {now} OR owner NOT IN (SELECT id FROM controllers \
             WHERE heartbeat_ms >= {now} - $3)) ORDER BY created_at LIMIT $4 {skip_locked}) \
             RETURNING id, epoch"
        );
        let rows = sqlx::query(&sql)
            .bind(me.to_string())
            .bind(ms(ttl))
            .bind(ms(ttl))
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(claim_from_row).collect()
    }

    /// The log of a claimed operation, every write of which is fenced by the claim's epoch.
    pub fn fenced_log(&self, claim: OperationClaim) -> FencedLog {
        FencedLog {
            store: self.clone(),
            epoch: claim.epoch,
        }
    }
}

fn claim_from_row(r: &sqlx::any::AnyRow) -> Result<OperationClaim, StoreError> {
    Ok(OperationClaim {
        operation: parse_uuid(&r.try_get::<String, _>("id")?)?,
        epoch: r.try_get("epoch")?,
    })
}

/// The step log of an operation owned at one epoch: a write after another controller took
/// the operation over fails with [`LogError::LeaseLost`] and changes nothing.
#[derive(Clone)]
pub struct FencedLog {
    store: Store,
    epoch: i64,
}

fn log_err(e: impl std::fmt::Display) -> LogError {
    LogError::Failed(e.to_string())
}

impl FencedLog {
    /// The epoch this log writes at.
    pub fn epoch(&self) -> i64 {
        self.epoch
    }

    /// Locks the operation's row and checks the epoch: the first statement of every write.
    async fn fence<'e>(
        &self,
        executor: impl sqlx::Executor<'e, Database = Any>,
        op: Uuid,
    ) -> Result<(), LogError> {
        let r = sqlx::query(FENCE)
            .bind(time::now())
            .bind(op.to_string())
            .bind(self.epoch)
            .execute(executor)
            .await
            .map_err(log_err)?;
        self.written(r.rows_affected())
    }

    /// A fenced statement changed `rows`: none means the epoch is stale.
    fn written(&self, rows: u64) -> Result<(), LogError> {
        if rows == 0 {
            return Err(LogError::LeaseLost {
                epoch: self.epoch as u64,
            });
        }
        Ok(())
    }

    /// Still the owner? (A fenced write that changes nothing but the update time: one
    /// statement, its own transaction.)
    pub async fn check_owned(&self, op: Uuid) -> Result<(), LogError> {
        self.fence(&self.store.pool, op).await
    }

    /// A fenced write as one statement (PostgreSQL): `write`, a data-modifying statement that
    /// reads the fence's `RETURNING` (its `$1`-`$3` are the fence's), runs only when the
    /// fence locked the row at this epoch; the answer is whether it did. One round trip
    /// instead of four (BEGIN, fence, write, COMMIT), with the same locking: the fence's row
    /// lock is taken first and held to the statement's commit.
    fn fenced_statement(write: &str) -> String {
        format!(
            "WITH fence AS ({FENCE} RETURNING id), written AS ({write}) \
             SELECT COUNT(*) AS n FROM fence"
        )
    }

    /// Runs a query built by [`FencedLog::fenced_statement`]: `LeaseLost` when the fence did
    /// not lock the row at this epoch (the write then changed nothing).
    async fn run_fenced<'q>(
        &self,
        query: sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>>,
    ) -> Result<(), LogError> {
        let row = query.fetch_one(&self.store.pool).await.map_err(log_err)?;
        let fenced = row.try_get::<i64, _>("n").map_err(log_err)?;
        self.written(fenced as u64)
    }

    /// [`OperationLog::init_steps`] on PostgreSQL: the pending steps inserted behind the
    /// fence, unless the operation has steps already, in one statement.
    async fn init_steps_in_one(&self, op: Uuid, names: &[&str]) -> Result<(), LogError> {
        if names.is_empty() {
            return self.check_owned(op).await;
        }
        let rows: Vec<String> = (0..names.len())
            .map(|i| {
                format!(
                    "(CAST(${} AS BIGINT), CAST(${} AS TEXT))",
                    4 + 2 * i,
                    5 + 2 * i
                )
            })
            .collect();
        let insert = format!(
            "INSERT INTO operation_steps (operation_id, idx, name, state, output, error, \
             started_at, finished_at) SELECT fence.id, s.idx, s.name, '{}', NULL, NULL, NULL, \
             NULL FROM fence CROSS JOIN (VALUES {}) AS s (idx, name) WHERE NOT EXISTS \
             (SELECT 1 FROM operation_steps WHERE operation_id = fence.id)",
            StepState::Pending.as_str(),
            rows.join(", ")
        );
        let sql = Self::fenced_statement(&insert);
        let mut query = sqlx::query(&sql)
            .bind(time::now())
            .bind(op.to_string())
            .bind(self.epoch);
        for (i, name) in names.iter().enumerate() {
            query = query.bind(i as i64).bind(*name);
        }
        self.run_fenced(query).await
    }
}

/// The fence: locks the operation's row when it is at this epoch (`$1` the update time, `$2`
/// the operation, `$3` the epoch).
const FENCE: &str = "UPDATE operations SET updated_at = $1 WHERE id = $2 AND epoch = $3";

/// The write of a step's state behind the fence (`$4`..`$9`, after the fence's parameters).
const SET_STEP_FENCED: &str = "UPDATE operation_steps SET state = $4, \
     output = COALESCE($5, output), error = $6, started_at = COALESCE($7, started_at), \
     finished_at = $8 WHERE operation_id = (SELECT id FROM fence) AND idx = $9";

#[async_trait]
impl OperationLog for FencedLog {
    async fn load(&self, op: Uuid) -> Result<LogSnapshot, LogError> {
        load_snapshot(&self.store, op).await.map_err(log_err)
    }

    async fn init_steps(&self, op: Uuid, names: &[&str]) -> Result<(), LogError> {
        if self.store.postgres {
            return self.init_steps_in_one(op, names).await;
        }
        let mut tx = self.store.pool.begin().await.map_err(log_err)?;
        self.fence(&mut *tx, op).await?;
        let existing =
            sqlx::query("SELECT COUNT(*) AS n FROM operation_steps WHERE operation_id = $1")
                .bind(op.to_string())
                .fetch_one(&mut *tx)
                .await
                .map_err(log_err)?;
        if existing.try_get::<i64, _>("n").map_err(log_err)? > 0 {
            return Ok(());
        }
        for (i, name) in names.iter().enumerate() {
            sqlx::query(
                "INSERT INTO operation_steps (operation_id, idx, name, state, output, error, \
                 started_at, finished_at) VALUES ($1, $2, $3, $4, NULL, NULL, NULL, NULL)",
            )
            .bind(op.to_string())
            .bind(i as i64)
            .bind(*name)
            .bind(StepState::Pending.as_str())
            .execute(&mut *tx)
            .await
            .map_err(log_err)?;
        }
        tx.commit().await.map_err(log_err)
    }

    async fn set_step(
        &self,
        op: Uuid,
        index: usize,
        state: StepState,
        output: Option<&Value>,
        error: Option<&str>,
    ) -> Result<(), LogError> {
        let (started, finished) = step_times(state);
        let (output, error) = (output.map(|o| o.to_string()), error.map(str::to_string));
        if self.store.postgres {
            let sql = Self::fenced_statement(SET_STEP_FENCED);
            let query = sqlx::query(&sql)
                .bind(time::now())
                .bind(op.to_string())
                .bind(self.epoch)
                .bind(state.as_str())
                .bind(output)
                .bind(error)
                .bind(started)
                .bind(finished)
                .bind(index as i64);
            return self.run_fenced(query).await;
        }
        // SQLite (one controller): the fence, then the write, in one transaction.
        let mut tx = self.store.pool.begin().await.map_err(log_err)?;
        self.fence(&mut *tx, op).await?;
        sqlx::query(
            "UPDATE operation_steps SET state = $1, output = COALESCE($2, output), error = $3, \
             started_at = COALESCE($4, started_at), finished_at = $5 \
             WHERE operation_id = $6 AND idx = $7",
        )
        .bind(state.as_str())
        .bind(output)
        .bind(error)
        .bind(started)
        .bind(finished)
        .bind(op.to_string())
        .bind(index as i64)
        .execute(&mut *tx)
        .await
        .map_err(log_err)?;
        tx.commit().await.map_err(log_err)
    }

    async fn set_state(
        &self,
        op: Uuid,
        state: OperationState,
        error: Option<&str>,
    ) -> Result<(), LogError> {
        let r = sqlx::query(
            "UPDATE operations SET state = $1, error = COALESCE($2, error), updated_at = $3 \
             WHERE id = $4 AND epoch = $5",
        )
        .bind(state.as_str())
        .bind(error.map(str::to_string))
        .bind(time::now())
        .bind(op.to_string())
        .bind(self.epoch)
        .execute(&self.store.pool)
        .await
        .map_err(log_err)?;
        self.written(r.rows_affected())
    }

    async fn set_message(&self, op: Uuid, message: &str) -> Result<(), LogError> {
        let r = sqlx::query(
            "UPDATE operations SET message = $1, updated_at = $2 WHERE id = $3 AND epoch = $4",
        )
        .bind(message)
        .bind(time::now())
        .bind(op.to_string())
        .bind(self.epoch)
        .execute(&self.store.pool)
        .await
        .map_err(log_err)?;
        self.written(r.rows_affected())
    }

    async fn cancel_requested(&self, op: Uuid) -> Result<bool, LogError> {
        self.store.cancel_requested_of(op).await.map_err(log_err)
    }

    fn epoch(&self) -> Option<u64> {
        Some(self.epoch as u64)
    }
}

#[cfg(test)]
mod tests;
