//! Snapshots replicated to the controller's content-addressed store (issue 14, part 4): which
//! snapshots still need a replica, marking them replicated, and the replicated ones of an
//! instance (what an HA restart of an instance with a local disk chooses from).
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

    /// The instance's `available` snapshots with a complete replica, newest first: what an
    /// HA restart of an instance with a local disk chooses from (the newest one a live
    /// controller holds, see `live_replica_holders`).
    pub async fn replicated_snapshots(
        &self,
        instance: Uuid,
    ) -> Result<Vec<SnapshotRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "{SELECT} WHERE s.instance_id = $1 AND s.replicated_at IS NOT NULL \
             AND s.state = $2 ORDER BY s.created_at DESC, s.id DESC"
        ))
        .bind(instance.to_string())
        .bind(SnapshotState::Available.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(snapshot_from_row).collect()
    }

    /// After an HA restart from a replica: the instance's snapshots that were not sent to its
    /// new host with the replica (all but `kept`) are not there; they go `error` (deletable,
    /// not restorable). Answers how many.
    pub async fn fail_snapshots_not_sent(
        &self,
        instance: Uuid,
        kept: &[Uuid],
    ) -> Result<u64, StoreError> {
        let mut failed = 0;
        for snap in self.snapshots_of_instance(instance).await? {
            if kept.contains(&snap) {
                continue;
            }
            let r = sqlx::query(
                "UPDATE snapshots SET state = $1, updated_at = $2 \
                 WHERE id = $3 AND state <> $1",
            )
            .bind(SnapshotState::Error.as_str())
            .bind(time::now())
            .bind(snap.to_string())
            .execute(&self.pool)
            .await?;
            failed += r.rows_affected();
        }
        Ok(failed)
    }

    /// Ids of the instance's snapshots (any state).
    async fn snapshots_of_instance(&self, instance: Uuid) -> Result<Vec<Uuid>, StoreError> {
        let rows = sqlx::query("SELECT id FROM snapshots WHERE instance_id = $1")
            .bind(instance.to_string())
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| parse_uuid(&r.try_get::<String, _>("id")?))
            .collect()
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
