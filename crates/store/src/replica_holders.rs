//! Which controllers hold a complete replica of which snapshot (issue 12; the replicas are
//! issue 14's, see `snapshot_replicas`): each controller keeps its own replica store, as it
//! keeps its own copies of image bytes (`image_holders`). What a controller that lacks a
//! replica asks to find a live controller to copy it from, and what every controller's copy
//! pass reads to hold every replicated snapshot.
//!
//! A holder counts only while its controller is live (heartbeat younger than the lease
//! TTL); rows of controllers or snapshots that are gone are forgotten by
//! [`Store::forget_gone_replica_holders`].

use crate::image_holders::BlobHolder;
use crate::instances::parse_uuid;
use crate::{Store, StoreError};
use nimbus_api::SnapshotState;
use sqlx::Row;
use std::time::Duration;
use uuid::Uuid;

impl Store {
    /// Records that controller `me` holds a complete replica of `snapshot`. Idempotent.
    pub async fn add_replica_holder(&self, snapshot: Uuid, me: Uuid) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO replica_holders (snapshot_id, controller) VALUES ($1, $2) \
             ON CONFLICT (snapshot_id, controller) DO NOTHING",
        )
        .bind(snapshot.to_string())
        .bind(me.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records that controller `me` no longer holds a replica of `snapshot`.
    pub async fn remove_replica_holder(&self, snapshot: Uuid, me: Uuid) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM replica_holders WHERE snapshot_id = $1 AND controller = $2")
            .bind(snapshot.to_string())
            .bind(me.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The live controllers (heartbeat younger than `ttl`) holding a replica of `snapshot`,
    /// freshest heartbeat first.
    pub async fn live_replica_holders(
        &self,
        snapshot: Uuid,
        ttl: Duration,
    ) -> Result<Vec<BlobHolder>, StoreError> {
        self.live_holders("replica_holders", "snapshot_id", &snapshot.to_string(), ttl)
            .await
    }

    /// Replicated snapshots (instance, snapshot) that controller `me` does not hold: what
    /// its copy pass fetches.
    pub async fn replicas_missing_on(&self, me: Uuid) -> Result<Vec<(Uuid, Uuid)>, StoreError> {
        let rows = sqlx::query(
            "SELECT s.instance_id AS vm, s.id AS id FROM snapshots s \
             WHERE s.replicated_at IS NOT NULL AND s.state = $1 \
             AND NOT EXISTS (SELECT 1 FROM replica_holders h \
                             WHERE h.snapshot_id = s.id AND h.controller = $2) \
             ORDER BY s.instance_id, s.id",
        )
        .bind(SnapshotState::Available.as_str())
        .bind(me.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    parse_uuid(&r.try_get::<String, _>("vm")?)?,
                    parse_uuid(&r.try_get::<String, _>("id")?)?,
                ))
            })
            .collect()
    }

    /// Forgets holders whose controller row is gone and holders of snapshots that are gone.
    /// Returns how many rows went.
    pub async fn forget_gone_replica_holders(&self) -> Result<u64, StoreError> {
        let r = sqlx::query(
            "DELETE FROM replica_holders WHERE controller NOT IN (SELECT id FROM controllers) \
             OR snapshot_id NOT IN (SELECT id FROM snapshots)",
        )
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }
}

#[cfg(test)]
mod tests;
