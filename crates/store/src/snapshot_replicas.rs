//! Snapshots replicated to the controller's content-addressed store (issue 14, part 4): which
//! snapshots still need a replica, marking them replicated, and the latest replicated one of
//! an instance (what an HA restart of an instance with a local disk restores).
//!
//! Only snapshots of instances with `--ha restart` whose host keeps disks locally (no shared
//! storage) are replicated: for the others a replica buys nothing (they restart from their
//! shared disk, or not at all), and it costs controller disk and network.

use crate::instances::parse_uuid;
use crate::snapshots::{snapshot_from_row, SELECT};
use crate::{time, SnapshotRecord, Store, StoreError};
use nimbus_api::SnapshotState;
use sqlx::Row;
use uuid::Uuid;

impl Store {
    /// Instances (with their host) that have an `available` snapshot without a replica, are
    /// `--ha restart`, sit on a host without shared storage that is not down, and are not
    /// acted on by an operation (a delete could be merging layers): what the replication
    /// pass copies.
    pub async fn instances_to_replicate(&self) -> Result<Vec<(Uuid, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT DISTINCT i.id AS id, i.host AS host FROM snapshots s \
             JOIN instances i ON i.id = s.instance_id JOIN hosts h ON h.name = i.host \
             WHERE s.state = $1 AND s.replicated_at IS NULL AND s.host = i.host \
             AND i.ha = 'restart' AND i.operation_id IS NULL AND h.shared_storage IS NULL \
             AND h.down_since IS NULL \
             ORDER BY i.id",
        )
        .bind(SnapshotState::Available.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    parse_uuid(&r.try_get::<String, _>("id")?)?,
                    r.try_get("host")?,
                ))
            })
            .collect()
    }

    /// Marks snapshot `id` replicated now, with the bytes its replication sent. Idempotent:
    /// a replica is never marked twice (the first time stays).
    pub async fn mark_snapshot_replicated(&self, id: Uuid, bytes: u64) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE snapshots SET replicated_at = $1, replica_bytes = $2 \
             WHERE id = $3 AND replicated_at IS NULL",
        )
        .bind(time::now())
        .bind(bytes as i64)
        .bind(id.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The instance's newest snapshot with a complete replica, if any.
    pub async fn latest_replicated_snapshot(
        &self,
        instance: Uuid,
    ) -> Result<Option<SnapshotRecord>, StoreError> {
        let row = sqlx::query(&format!(
            "{SELECT} WHERE s.instance_id = $1 AND s.replicated_at IS NOT NULL \
             AND s.state = $2 ORDER BY s.created_at DESC, s.id DESC LIMIT 1"
        ))
        .bind(instance.to_string())
        .bind(SnapshotState::Available.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(snapshot_from_row).transpose()
    }

    /// After an HA restart from a replica: the instance's snapshots without one are not on
    /// its new host; they go `error` (deletable, not restorable). Answers how many.
    pub async fn fail_unreplicated_snapshots(&self, instance: Uuid) -> Result<u64, StoreError> {
        let r = sqlx::query(
            "UPDATE snapshots SET state = $1, updated_at = $2 \
             WHERE instance_id = $3 AND replicated_at IS NULL",
        )
        .bind(SnapshotState::Error.as_str())
        .bind(time::now())
        .bind(instance.to_string())
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }

    /// Ids of every snapshot that exists (any state): the roots of the replica store's
    /// mark-and-sweep (a replica whose snapshot is gone is collected).
    pub async fn all_snapshot_ids(&self) -> Result<Vec<Uuid>, StoreError> {
        let rows = sqlx::query("SELECT id FROM snapshots")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| parse_uuid(&r.try_get::<String, _>("id")?))
            .collect()
    }
}

#[cfg(test)]
mod tests;
