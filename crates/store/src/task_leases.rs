//! Background tasks run by one controller at a time: a lease per task in the database's
//! clock, and an epoch that fences the holder's writes.
//!
//! ```text
//!   free ──acquire──▶ held: holder = C, epoch = e, lease_until = now + ttl
//!    ▲                  │  C acquires again every tick (same epoch) and its heartbeat renews
//!    │                  │  every transaction of C's fenced store: ... WHERE task AND epoch = e
//!    └── C dead, its ◀──┘  (zero rows: the task moved, nothing written)
//!        lease expired:   another controller acquires it at epoch e + 1
//! ```
//! A task changes holder only when its holder's lease ran out or its holder is no live
//! controller, so it moves within TTL + one tick of its holder's death or stall. A holder
//! that stalled past its lease and wakes up after the move can write nothing through its
//! [`Store::fenced`] handle: the fence compares epochs under the lease row's lock, which a
//! takeover also takes, so a write and a takeover are ordered.

use crate::{Store, StoreError};
use sqlx::{Any, Row, Transaction};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// A background task this controller holds, with the epoch that fences its writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskLease {
    pub task: String,
    pub epoch: i64,
}

/// Who holds a background task (for `nimbus controller list`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskHolder {
    pub task: String,
    pub holder: Uuid,
    pub epoch: i64,
}

fn ms(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

impl Store {
    /// Acquires (or keeps) background task `task` for controller `me`: granted when nobody
    /// holds it, when `me` already does (same epoch), or when its holder's lease ran out or
    /// its holder is no live controller (next epoch). `None`: another controller runs it.
    pub async fn acquire_task(
        &self,
        task: &str,
        me: Uuid,
        ttl: Duration,
    ) -> Result<Option<TaskLease>, StoreError> {
        let now = self.now_ms();
        let sql = format!(
            "UPDATE task_leases SET \
             epoch = CASE WHEN holder = $1 THEN epoch ELSE epoch + 1 END, \
             holder = $1, lease_until_ms = {now} + $2 \
             WHERE task = $3 AND (holder = $1 OR holder IS NULL OR lease_until_ms < {now} \
             OR holder NOT IN (SELECT id FROM controllers WHERE heartbeat_ms >= {now} - $4)) \
             RETURNING epoch"
        );
        let row = sqlx::query(&sql)
            .bind(me.to_string())
            .bind(ms(ttl))
            .bind(task)
            .bind(ms(ttl))
            .fetch_optional(&self.pool)
            .await?;
        let row = match row {
            Some(r) => Some(r),
            // No row yet (the task's first run on this database): the first insert wins.
            None => {
                let sql = format!(
                    "INSERT INTO task_leases (task, holder, epoch, lease_until_ms) \
                     VALUES ($1, $2, 1, {now} + $3) ON CONFLICT (task) DO NOTHING RETURNING epoch"
                );
                sqlx::query(&sql)
                    .bind(task)
                    .bind(me.to_string())
                    .bind(ms(ttl))
                    .fetch_optional(&self.pool)
                    .await?
            }
        };
        row.map(|r| {
            Ok(TaskLease {
                task: task.to_string(),
                epoch: r.try_get("epoch")?,
            })
        })
        .transpose()
    }

    /// Renews every task lease `me` holds (with its heartbeat, so a long pass keeps its task).
    pub(crate) async fn renew_tasks(&self, me: Uuid, ttl: Duration) -> Result<(), StoreError> {
        let sql = format!(
            "UPDATE task_leases SET lease_until_ms = {} + $1 WHERE holder = $2",
            self.now_ms()
        );
        sqlx::query(&sql)
            .bind(ms(ttl))
            .bind(me.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Who holds each background task whose lease has not run out.
    pub async fn task_holders(&self) -> Result<Vec<TaskHolder>, StoreError> {
        let sql = format!(
            "SELECT task, holder, epoch FROM task_leases \
             WHERE holder IS NOT NULL AND lease_until_ms >= {} ORDER BY task",
            self.now_ms()
        );
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                Ok(TaskHolder {
                    task: r.try_get("task")?,
                    holder: crate::instances::parse_uuid(&r.try_get::<String, _>("holder")?)?,
                    epoch: r.try_get("epoch")?,
                })
            })
            .collect()
    }

    /// This store, with every transaction it begins fenced by `lease`: a transaction begun
    /// after the task moved to another controller fails with [`StoreError::TaskLeaseLost`]
    /// before it writes anything. (Statements outside transactions are not fenced: a task's
    /// writes that must not be repeated by a stale holder go through transactions.)
    pub fn fenced(&self, lease: TaskLease) -> Store {
        Store {
            fence: Some(Arc::new(lease)),
            ..self.clone()
        }
    }

    /// Begins a transaction; on a [`Self::fenced`] store, its first statement is the fence.
    pub(crate) async fn begin(&self) -> Result<Transaction<'static, Any>, StoreError> {
        let mut tx = self.pool.begin().await?;
        if let Some(lease) = &self.fence {
            fence(&mut tx, lease).await?;
        }
        Ok(tx)
    }
}

/// Locks the task's lease row and checks the epoch: zero rows means another controller
/// holds the task now.
async fn fence(tx: &mut Transaction<'_, Any>, lease: &TaskLease) -> Result<(), StoreError> {
    let r = sqlx::query("UPDATE task_leases SET epoch = epoch WHERE task = $1 AND epoch = $2")
        .bind(&lease.task)
        .bind(lease.epoch)
        .execute(&mut **tx)
        .await?;
    if r.rows_affected() == 0 {
        return Err(StoreError::TaskLeaseLost {
            task: lease.task.clone(),
            epoch: lease.epoch,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
