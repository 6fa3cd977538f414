//! Capacity claims that stay correct with any number of controllers.
//!
//! A controller chooses a host from a snapshot of the allocations (which may be stale by the
//! time it acts); the claim then re-checks that host *inside one transaction*, with the
//! host's row locked, and writes the reservation in that same transaction:
//!
//! ```text
//!   BEGIN
//!   lock the placement group's row (spread groups)     -- orders members of one group
//!   lock the host's row                                 -- orders claims on one host
//!   allocation := what instances and running migrations hold there now (committed)
//!   allocation + size <= offered, and no other spread member there?  else NoRoom
//!   write the reservation (instance.host, a migration row, or the move)
//!   COMMIT
//! ```
//! Two claims on one host serialise on the lock; the second re-reads the allocation after
//! the first committed (PostgreSQL's read committed takes a new snapshot per statement;
//! SQLite's first write takes the database's write lock). A claim refused with
//! [`StoreError::NoRoom`] is retried by the caller on a fresh snapshot, so it moves on to the
//! next candidate host. Releases need no lock: they only ever free room.

use crate::locks::{lock_host, lock_placement_group};
use crate::migrations::insert_migration;
use crate::{time, Allocation, NewMigration, Store, StoreError};
use sqlx::{Any, Row, Transaction};
use uuid::Uuid;

/// A claim of room on one host.
#[derive(Debug, Clone)]
pub struct HostClaim {
    pub host: String,
    /// What the host offers in total (physical capacity times its allocation ratios).
    pub offered: Allocation,
    /// The spread placement group the instance belongs to: no other member may run on, or
    /// be migrating to, the host.
    pub spread_group: Option<Uuid>,
}

/// The size of an instance, as its row records it.
struct Size {
    vcpus: u64,
    memory_mib: u64,
    disk_gib: u64,
    host: Option<String>,
}

impl Store {
    /// Places a new instance on `claim.host` if the room is still there. Idempotent: an
    /// instance already placed there is left as it is; one placed elsewhere is a conflict.
    pub async fn claim_placement(&self, id: Uuid, claim: &HostClaim) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let size = size_of(&mut tx, id).await?;
        match size.host.as_deref() {
            Some(h) if h == claim.host => return Ok(()),
            Some(h) => {
                return Err(StoreError::Conflict(format!(
                    "instance {id} is already placed on host {h}"
                )))
            }
            None => {}
        }
        check_room(&mut tx, id, &size, claim).await?;
        let r = sqlx::query(
            "UPDATE instances SET host = $1, generation = generation + 1, updated_at = $2 \
             WHERE id = $3 AND host IS NULL",
        )
        .bind(&claim.host)
        .bind(time::now())
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!(
                "instance {id} was placed meanwhile"
            )));
        }
        tx.commit().await?;
        Ok(())
    }

    /// Records a running migration (which holds the instance's size on its target) if the
    /// target still has the room. Idempotent: a migration already recorded is kept.
    pub async fn claim_migration(
        &self,
        m: &NewMigration,
        claim: &HostClaim,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let exists = sqlx::query("SELECT id FROM migrations WHERE id = $1")
            .bind(m.id.to_string())
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
        if exists {
            return Ok(());
        }
        let size = Size {
            vcpus: m.vcpus as u64,
            memory_mib: m.memory_mib,
            disk_gib: m.disk_gib,
            host: None,
        };
        check_room(&mut tx, m.instance_id, &size, claim).await?;
        insert_migration(&mut tx, m).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Moves an instance from `source` to `claim.host` (a restart elsewhere) if the room is
    /// still there. Idempotent: an instance already there is left as it is.
    pub async fn claim_move(
        &self,
        id: Uuid,
        source: &str,
        claim: &HostClaim,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let size = size_of(&mut tx, id).await?;
        if size.host.as_deref() == Some(claim.host.as_str()) {
            return Ok(());
        }
        check_room(&mut tx, id, &size, claim).await?;
        let r = sqlx::query(
            "UPDATE instances SET host = $1, generation = generation + 1, updated_at = $2 \
             WHERE id = $3 AND host = $4",
        )
        .bind(&claim.host)
        .bind(time::now())
        .bind(id.to_string())
        .bind(source)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!(
                "instance {id} is no longer on host {source}"
            )));
        }
        tx.commit().await?;
        Ok(())
    }
}

async fn size_of(tx: &mut Transaction<'_, Any>, id: Uuid) -> Result<Size, StoreError> {
    let r = sqlx::query("SELECT vcpus, memory_mib, disk_gib, host FROM instances WHERE id = $1")
        .bind(id.to_string())
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| StoreError::not_found("instance", id.to_string()))?;
    Ok(Size {
        vcpus: r.try_get::<i64, _>("vcpus")? as u64,
        memory_mib: r.try_get::<i64, _>("memory_mib")? as u64,
        disk_gib: r.try_get::<i64, _>("disk_gib")? as u64,
        host: r.try_get("host")?,
    })
}

/// Locks what the claim depends on, then checks the room with what is committed now.
async fn check_room(
    tx: &mut Transaction<'_, Any>,
    instance: Uuid,
    size: &Size,
    claim: &HostClaim,
) -> Result<(), StoreError> {
    if let Some(group) = claim.spread_group {
        lock_placement_group(tx, group).await?;
    }
    lock_host(tx, &claim.host).await?;
    let held = allocation_on(tx, &claim.host).await?;
    let o = &claim.offered;
    let fits = held.vcpus + size.vcpus <= o.vcpus
        && held.memory_mib + size.memory_mib <= o.memory_mib
        && held.disk_gib + size.disk_gib <= o.disk_gib;
    if !fits {
        return Err(StoreError::NoRoom {
            host: claim.host.clone(),
            reason: "taken meanwhile by another placement".into(),
        });
    }
    if let Some(group) = claim.spread_group {
        if spread_member_on(tx, group, instance, &claim.host).await? {
            return Err(StoreError::NoRoom {
                host: claim.host.clone(),
                reason: "another member of its spread placement group took it meanwhile".into(),
            });
        }
    }
    Ok(())
}

/// What instances placed on `host` and running migrations to it hold, as committed now.
async fn allocation_on(
    tx: &mut Transaction<'_, Any>,
    host: &str,
) -> Result<Allocation, StoreError> {
    let mut out = Allocation::default();
    for sql in [
        "SELECT CAST(COALESCE(SUM(vcpus), 0) AS BIGINT) AS vcpus, \
         CAST(COALESCE(SUM(memory_mib), 0) AS BIGINT) AS memory_mib, \
         CAST(COALESCE(SUM(disk_gib), 0) AS BIGINT) AS disk_gib FROM instances WHERE host = $1",
        "SELECT CAST(COALESCE(SUM(vcpus), 0) AS BIGINT) AS vcpus, \
         CAST(COALESCE(SUM(memory_mib), 0) AS BIGINT) AS memory_mib, \
         CAST(COALESCE(SUM(disk_gib), 0) AS BIGINT) AS disk_gib FROM migrations \
         WHERE target = $1 AND state = 'running'",
    ] {
        let r = sqlx::query(sql).bind(host).fetch_one(&mut **tx).await?;
        out.vcpus += r.try_get::<i64, _>("vcpus")? as u64;
        out.memory_mib += r.try_get::<i64, _>("memory_mib")? as u64;
        out.disk_gib += r.try_get::<i64, _>("disk_gib")? as u64;
    }
    Ok(out)
}

/// Another member of spread group `group` runs on `host` or is migrating there.
async fn spread_member_on(
    tx: &mut Transaction<'_, Any>,
    group: Uuid,
    instance: Uuid,
    host: &str,
) -> Result<bool, StoreError> {
    let r = sqlx::query(
        "SELECT COUNT(*) AS n FROM instances i WHERE i.placement_group = $1 AND i.id <> $2 AND \
         (i.host = $3 OR EXISTS (SELECT 1 FROM migrations m WHERE m.instance_id = i.id \
          AND m.state = 'running' AND m.target = $4))",
    )
    .bind(group.to_string())
    .bind(instance.to_string())
    .bind(host)
    .bind(host)
    .fetch_one(&mut **tx)
    .await?;
    Ok(r.try_get::<i64, _>("n")? > 0)
}

#[cfg(test)]
mod tests;
