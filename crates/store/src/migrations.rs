//! Live migration records. A running migration reserves its instance's size on the target.

use crate::instances::parse_uuid;
use crate::{time, Scope, Store, StoreError};
use nimbus_api::{MigrationStats, MigrationView};
use sqlx::{Any, Row, Transaction};
use uuid::Uuid;

/// A new migration (its id is the id of its operation).
#[derive(Debug, Clone)]
pub struct NewMigration {
    pub id: Uuid,
    pub instance_id: Uuid,
    /// The instance's project (migrations are scoped like their instances).
    pub project: String,
    pub source: String,
    pub target: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub disk_gib: u64,
    pub max_downtime_ms: u64,
}

pub(crate) async fn insert_migration(
    tx: &mut Transaction<'_, Any>,
    m: &NewMigration,
) -> Result<(), StoreError> {
    let now = time::now();
    sqlx::query(
        "INSERT INTO migrations (id, instance_id, source, target, state, vcpus, memory_mib, \
         disk_gib, max_downtime_ms, stats, created_at, updated_at, project) \
         VALUES ($1, $2, $3, $4, 'running', $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(m.id.to_string())
    .bind(m.instance_id.to_string())
    .bind(&m.source)
    .bind(&m.target)
    .bind(m.vcpus as i64)
    .bind(m.memory_mib as i64)
    .bind(m.disk_gib as i64)
    .bind(m.max_downtime_ms as i64)
    .bind(serde_json::to_string(&MigrationStats::default()).unwrap_or_default())
    .bind(&now)
    .bind(&now)
    .bind(&m.project)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn from_row(r: &sqlx::any::AnyRow) -> Result<MigrationView, StoreError> {
    let stats: String = r.try_get("stats")?;
    Ok(MigrationView {
        id: parse_uuid(&r.try_get::<String, _>("id")?)?,
        instance_id: parse_uuid(&r.try_get::<String, _>("instance_id")?)?,
        source: r.try_get("source")?,
        target: r.try_get("target")?,
        state: r.try_get("state")?,
        max_downtime_ms: r.try_get::<i64, _>("max_downtime_ms")? as u64,
        stats: serde_json::from_str(&stats)
            .map_err(|e| StoreError::Corrupt(format!("migration stats: {e}")))?,
        created_at: time::parse(&r.try_get::<String, _>("created_at")?)?,
        updated_at: time::parse(&r.try_get::<String, _>("updated_at")?)?,
    })
}

impl Store {
    /// Records a migration in `running` (reserving capacity on the target) without checking
    /// the room (operations claim it with [`Store::claim_migration`]); idempotent.
    pub async fn insert_migration(&self, m: &NewMigration) -> Result<MigrationView, StoreError> {
        if let Ok(existing) = self.get_migration(&Scope::All, m.id).await {
            return Ok(existing);
        }
        let mut tx = self.begin().await?;
        insert_migration(&mut tx, m).await?;
        tx.commit().await?;
        self.get_migration(&Scope::All, m.id).await
    }

    /// The migration with this id, if `scope` sees it.
    pub async fn get_migration(
        &self,
        scope: &Scope,
        id: Uuid,
    ) -> Result<MigrationView, StoreError> {
        let sql = format!(
            "SELECT * FROM migrations WHERE id = $1 AND {}",
            scope.condition("project", 2)
        );
        let row = scope
            .bind(sqlx::query(&sql).bind(id.to_string()))
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::not_found("migration", id.to_string()))?;
        from_row(&row)
    }

    /// Migrations of an instance, newest first.
    pub async fn migrations_of(
        &self,
        scope: &Scope,
        instance: Uuid,
    ) -> Result<Vec<MigrationView>, StoreError> {
        let sql = format!(
            "SELECT * FROM migrations WHERE instance_id = $1 AND {} ORDER BY created_at DESC",
            scope.condition("project", 2)
        );
        let rows = scope
            .bind(sqlx::query(&sql).bind(instance.to_string()))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(from_row).collect()
    }

    /// Updates the statistics of a migration.
    pub async fn set_migration_stats(
        &self,
        id: Uuid,
        stats: &MigrationStats,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE migrations SET stats = $1, updated_at = $2 WHERE id = $3")
            .bind(serde_json::to_string(stats).unwrap_or_default())
            .bind(time::now())
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Ends a migration (`succeeded`, `failed`, `cancelled`), releasing its reservation.
    pub async fn end_migration(&self, id: Uuid, state: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE migrations SET state = $1, updated_at = $2 WHERE id = $3")
            .bind(state)
            .bind(time::now())
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
