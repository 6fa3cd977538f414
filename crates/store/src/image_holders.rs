//! Which controllers hold a copy of which uploaded image's bytes (issue 12): what a
//! controller that lacks a blob asks to find a live controller to fetch it from, and what
//! the copy pass reads to give every live controller every blob.
//!
//! A holder counts only while its controller is live (heartbeat younger than the lease TTL,
//! as [`Store::list_controllers`] decides); rows of controllers that are gone are forgotten
//! by [`Store::forget_gone_image_holders`].

use crate::instances::parse_uuid;
use crate::{Store, StoreError};
use sqlx::Row;
use std::time::Duration;
use uuid::Uuid;

/// A live controller holding a blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobHolder {
    pub controller: Uuid,
    /// Where it serves (its row in `controllers`).
    pub url: String,
}

pub(crate) fn ms(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

impl Store {
    /// Records that controller `me` holds a verified copy of `digest`. Idempotent.
    pub async fn add_image_holder(&self, digest: &str, me: Uuid) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO image_holders (digest, controller) VALUES ($1, $2) \
             ON CONFLICT (digest, controller) DO NOTHING",
        )
        .bind(digest)
        .bind(me.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records that controller `me` no longer holds `digest`.
    pub async fn remove_image_holder(&self, digest: &str, me: Uuid) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM image_holders WHERE digest = $1 AND controller = $2")
            .bind(digest)
            .bind(me.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The live controllers (heartbeat younger than `ttl`) holding `digest`, freshest
    /// heartbeat first.
    pub async fn live_image_holders(
        &self,
        digest: &str,
        ttl: Duration,
    ) -> Result<Vec<BlobHolder>, StoreError> {
        self.live_holders("image_holders", "digest", digest, ttl)
            .await
    }

    /// The live controllers (heartbeat younger than `ttl`) holding what `key_column` of
    /// holders table `table` names `key`, freshest heartbeat first (tables and columns are
    /// this crate's constants).
    pub(crate) async fn live_holders(
        &self,
        table: &'static str,
        key_column: &'static str,
        key: &str,
        ttl: Duration,
    ) -> Result<Vec<BlobHolder>, StoreError> {
        let now = self.now_ms();
        let rows = sqlx::query(&format!(
            "SELECT c.id AS id, c.url AS url FROM {table} h \
             JOIN controllers c ON c.id = h.controller \
             WHERE h.{key_column} = $1 AND c.heartbeat_ms >= {now} - $2 \
             ORDER BY c.heartbeat_ms DESC, c.id"
        ))
        .bind(key)
        .bind(ms(ttl))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(BlobHolder {
                    controller: parse_uuid(&r.try_get::<String, _>("id")?)?,
                    url: r.try_get("url")?,
                })
            })
            .collect()
    }

    /// Digests some image names that controller `me` does not hold: what it has to copy.
    pub async fn image_digests_missing_on(&self, me: Uuid) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT DISTINCT i.digest AS digest FROM images i WHERE i.digest IS NOT NULL \
             AND NOT EXISTS (SELECT 1 FROM image_holders h \
                             WHERE h.digest = i.digest AND h.controller = $1) \
             ORDER BY i.digest",
        )
        .bind(me.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok(r.try_get::<String, _>("digest")?))
            .collect()
    }

    /// Names of the images whose bytes are `digest` (for messages).
    pub async fn image_names_of_digest(&self, digest: &str) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("SELECT name FROM images WHERE digest = $1 ORDER BY name")
            .bind(digest)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok(r.try_get::<String, _>("name")?))
            .collect()
    }

    /// Forgets holders whose controller row is gone (it stopped, or a later run at its
    /// address replaced it) and holders of digests no image names any more. Returns how
    /// many rows went.
    pub async fn forget_gone_image_holders(&self) -> Result<u64, StoreError> {
        let r = sqlx::query(
            "DELETE FROM image_holders WHERE controller NOT IN (SELECT id FROM controllers) \
             OR digest NOT IN (SELECT digest FROM images WHERE digest IS NOT NULL)",
        )
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }
}

#[cfg(test)]
mod tests;
