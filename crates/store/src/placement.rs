//! Placement in the store: which host holds which instance, and so what is allocated where.
//! Holding a host (the `host` column of an instance, or a running migration's target) is
//! what reserves capacity there.

use crate::{time, Store, StoreError};
use sqlx::Row;
use std::collections::HashMap;
use uuid::Uuid;

/// Per-host sums of what instances hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Allocation {
    pub vcpus: u64,
    pub memory_mib: u64,
    pub disk_gib: u64,
    pub instances: u32,
}

impl Store {
    /// Sum of what instances hold, per host.
    pub async fn allocations(&self) -> Result<HashMap<String, Allocation>, StoreError> {
        let rows = sqlx::query(
            "SELECT host, CAST(SUM(vcpus) AS BIGINT) AS vcpus, CAST(SUM(memory_mib) AS BIGINT) AS memory_mib, \
             CAST(SUM(disk_gib) AS BIGINT) AS disk_gib, COUNT(*) AS n FROM instances \
             WHERE host IS NOT NULL GROUP BY host",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut out = HashMap::new();
        for r in rows {
            let host: String = r.try_get("host")?;
            out.insert(
                host,
                Allocation {
                    vcpus: r.try_get::<i64, _>("vcpus")? as u64,
                    memory_mib: r.try_get::<i64, _>("memory_mib")? as u64,
                    disk_gib: r.try_get::<i64, _>("disk_gib")? as u64,
                    instances: r.try_get::<i64, _>("n")? as u32,
                },
            );
        }
        // A running migration holds the instance's size on its target too.
        let rows = sqlx::query(
            "SELECT target, CAST(SUM(vcpus) AS BIGINT) AS vcpus, CAST(SUM(memory_mib) AS BIGINT) AS memory_mib, \
             CAST(SUM(disk_gib) AS BIGINT) AS disk_gib FROM migrations WHERE state = 'running' GROUP BY target",
        )
        .fetch_all(&self.pool)
        .await?;
        for r in rows {
            let a = out.entry(r.try_get::<String, _>("target")?).or_default();
            a.vcpus += r.try_get::<i64, _>("vcpus")? as u64;
            a.memory_mib += r.try_get::<i64, _>("memory_mib")? as u64;
            a.disk_gib += r.try_get::<i64, _>("disk_gib")? as u64;
        }
        Ok(out)
    }

    /// Places the instance on `host` only if it is not placed yet or already there
    /// (compare-and-swap: two schedulers cannot both place it).
    pub async fn reserve_host(&self, id: Uuid, host: &str) -> Result<(), StoreError> {
        let r = sqlx::query(
            "UPDATE instances SET host = $1, generation = generation + 1, updated_at = $2 \
             WHERE id = $3 AND (host IS NULL OR host = $4)",
        )
        .bind(host)
        .bind(time::now())
        .bind(id.to_string())
        .bind(host)
        .execute(&self.pool)
        .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!(
                "instance {id} is already placed on another host"
            )));
        }
        Ok(())
    }

    /// Moves the instance to `target` (the commit of a live migration), only if it is still
    /// on `source`.
    pub async fn move_instance(
        &self,
        id: Uuid,
        source: &str,
        target: &str,
    ) -> Result<(), StoreError> {
        let r = sqlx::query(
            "UPDATE instances SET host = $1, generation = generation + 1, updated_at = $2 \
             WHERE id = $3 AND (host = $4 OR host = $5)",
        )
        .bind(target)
        .bind(time::now())
        .bind(id.to_string())
        .bind(source)
        .bind(target)
        .execute(&self.pool)
        .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!(
                "instance {id} is no longer on host {source}"
            )));
        }
        Ok(())
    }

    /// Releases the instance's placement (and so its capacity reservation).
    pub async fn release_host(&self, id: Uuid) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE instances SET host = NULL, generation = generation + 1, updated_at = $1 WHERE id = $2",
        )
        .bind(time::now())
        .bind(id.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
