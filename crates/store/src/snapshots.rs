//! Snapshots of instances and each instance's position in its snapshot tree.
//!
//! The tree: a snapshot's `parent_id` is the instance's *current* snapshot when it was taken
//! (`instances.current_snapshot`: the snapshot taken or restored last). Deleting a snapshot
//! hands its children to its parent and, if it was current, makes its parent current, so the
//! tree stays connected and the next snapshot still descends from the right place.
//!
//! Quota and metering (tenancy): every row counts against its project's snapshot quota
//! (check [`Store::project_snapshot_usage`] before [`Store::begin_snapshot`]), and
//! `stored_bytes` of rows in `available` is what snapshot GiB-hours are billed on.

use crate::instances::{claim_instance, parse_uuid};
use crate::operations::insert_operation;
use crate::page::{KeyColumn, Keyset, Page, PageRequest};
use crate::quotas::check_quota;
use crate::Scope;
use crate::{time, NewOperation, Store, StoreError};
use chrono::{DateTime, Utc};
use nimbus_api::{SnapshotState, SnapshotView};
use sqlx::{Any, Row, Transaction};
use uuid::Uuid;

/// A snapshot row, with the names the API shows next to it.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotRecord {
    pub id: Uuid,
    pub project: String,
    pub instance_id: Uuid,
    /// Name of the instance (joined).
    pub instance_name: String,
    pub name: String,
    pub parent_id: Option<Uuid>,
    /// Name of the parent (joined).
    pub parent_name: Option<String>,
    /// Memory and device state included (`false`: disk only).
    pub memory: bool,
    /// The host that stores it.
    pub host: String,
    pub state: SnapshotState,
    pub figures: SnapshotFigures,
    /// The instance's current snapshot is this one.
    pub current: bool,
    pub operation_id: Option<Uuid>,
    /// When its replica in the controller's store was complete (`None`: none).
    pub replicated_at: Option<DateTime<Utc>>,
    /// Bytes its replication sent (0 without a replica).
    pub replica_bytes: u64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What a snapshot cost, as its host measured it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SnapshotFigures {
    pub vm_pause_us: u64,
    pub disk_layer_bytes: u64,
    pub memory_bytes: u64,
    pub memory_new_bytes: u64,
    /// What metering bills: disk layer plus memory this snapshot added.
    pub stored_bytes: u64,
}

impl SnapshotRecord {
    /// The public view.
    pub fn view(&self) -> SnapshotView {
        SnapshotView {
            id: self.id,
            name: self.name.clone(),
            instance: self.instance_name.clone(),
            instance_id: self.instance_id,
            parent: self.parent_name.clone(),
            parent_id: self.parent_id,
            memory: self.memory,
            state: self.state,
            host: self.host.clone(),
            vm_pause_ms: self.figures.vm_pause_us as f64 / 1000.0,
            stored_bytes: self.figures.stored_bytes,
            disk_layer_bytes: self.figures.disk_layer_bytes,
            memory_bytes: self.figures.memory_bytes,
            memory_new_bytes: self.figures.memory_new_bytes,
            current: self.current,
            project: self.project.clone(),
            operation: self.operation_id,
            replicated_at: self.replicated_at,
            replica_bytes: self.replica_bytes,
            replicas: None,
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }
}

/// A snapshot about to be taken (its id is chosen before the host is asked).
#[derive(Debug, Clone, PartialEq)]
pub struct NewSnapshot {
    pub id: Uuid,
    pub project: String,
    pub instance_id: Uuid,
    pub name: String,
    pub memory: bool,
    pub host: String,
}

pub(crate) const SELECT: &str =
    "SELECT s.*, i.name AS instance_name, i.current_snapshot AS instance_current, \
     p.name AS parent_name FROM snapshots s JOIN instances i ON i.id = s.instance_id \
     LEFT JOIN snapshots p ON p.id = s.parent_id";

fn uuid_opt(v: Option<String>) -> Result<Option<Uuid>, StoreError> {
    v.as_deref().map(parse_uuid).transpose()
}

pub(crate) fn snapshot_from_row(r: &sqlx::any::AnyRow) -> Result<SnapshotRecord, StoreError> {
    let state: String = r.try_get("state")?;
    let id = parse_uuid(&r.try_get::<String, _>("id")?)?;
    let current = uuid_opt(r.try_get("instance_current")?)? == Some(id);
    let n = |col: &str| -> Result<u64, StoreError> { Ok(r.try_get::<i64, _>(col)?.max(0) as u64) };
    Ok(SnapshotRecord {
        id,
        project: r.try_get("project")?,
        instance_id: parse_uuid(&r.try_get::<String, _>("instance_id")?)?,
        instance_name: r.try_get("instance_name")?,
        name: r.try_get("name")?,
        parent_id: uuid_opt(r.try_get("parent_id")?)?,
        parent_name: r.try_get("parent_name")?,
        memory: r.try_get::<i64, _>("memory")? != 0,
        host: r.try_get("host")?,
        state: SnapshotState::parse(&state)
            .ok_or_else(|| StoreError::Corrupt(format!("snapshot state {state:?}")))?,
        figures: SnapshotFigures {
            vm_pause_us: n("vm_pause_us")?,
            disk_layer_bytes: n("disk_layer_bytes")?,
            memory_bytes: n("memory_bytes")?,
            memory_new_bytes: n("memory_new_bytes")?,
            stored_bytes: n("stored_bytes")?,
        },
        current,
        operation_id: uuid_opt(r.try_get("operation_id")?)?,
        replicated_at: time::parse_opt(r.try_get("replicated_at")?)?,
        replica_bytes: n("replica_bytes")?,
        created_at: time::parse(&r.try_get::<String, _>("created_at")?)?,
        updated_at: time::parse(&r.try_get::<String, _>("updated_at")?)?,
    })
}

/// Inserts the row in `creating`; its parent is the instance's current snapshot.
async fn insert_snapshot(
    tx: &mut Transaction<'_, Any>,
    new: &NewSnapshot,
    op: Uuid,
) -> Result<(), StoreError> {
    let now = time::now();
    sqlx::query(
        "INSERT INTO snapshots (id, project, instance_id, name, parent_id, memory, host, state, \
         operation_id, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, (SELECT current_snapshot FROM instances WHERE id = $5), \
         $6, $7, $8, $9, $10, $11)",
    )
    .bind(new.id.to_string())
    .bind(&new.project)
    .bind(new.instance_id.to_string())
    .bind(&new.name)
    .bind(new.instance_id.to_string())
    .bind(new.memory as i64)
    .bind(&new.host)
    .bind(SnapshotState::Creating.as_str())
    .bind(op.to_string())
    .bind(&now)
    .bind(&now)
    .execute(&mut **tx)
    .await
    .map_err(|e| {
        StoreError::unique_or(e, || {
            format!(
                "a snapshot named {:?} already exists in project {:?}; choose another name (--name)",
                new.name, new.project
            )
        })
    })?;
    Ok(())
}

impl Store {
    /// Records a snapshot in `creating` together with the operation that takes it, which
    /// becomes its instance's operation (refused while another one runs, or if the name is
    /// taken).
    pub async fn begin_snapshot(
        &self,
        new: &NewSnapshot,
        op: &NewOperation,
    ) -> Result<SnapshotRecord, StoreError> {
        let mut tx = self.begin().await?;
        let want = nimbus_api::QuotaUsage {
            snapshots: 1,
            ..Default::default()
        };
        check_quota(&mut tx, &new.project, &want).await?;
        claim_instance(&mut tx, new.instance_id, op).await?;
        insert_snapshot(&mut tx, new, op.id).await?;
        insert_operation(&mut tx, op).await?;
        tx.commit().await?;
        self.get_snapshot_by_id(new.id).await
    }

    /// Records the snapshot if it is not recorded yet (idempotent replay of a create).
    pub async fn ensure_snapshot(&self, new: &NewSnapshot, op: Uuid) -> Result<(), StoreError> {
        if self.get_snapshot_by_id(new.id).await.is_ok() {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        insert_snapshot(&mut tx, new, op).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Starts an operation on an available snapshot (or, to delete it, one in `error`): it
    /// becomes its instance's operation (refused while another one runs) and the snapshot
    /// shows `state` meanwhile.
    pub async fn begin_snapshot_operation(
        &self,
        snapshot: Uuid,
        state: SnapshotState,
        op: &NewOperation,
    ) -> Result<(), StoreError> {
        let snap = self.get_snapshot_by_id(snapshot).await?;
        let mut tx = self.begin().await?;
        claim_instance(&mut tx, snap.instance_id, op).await?;
        let also = if state == SnapshotState::Deleting {
            SnapshotState::Error
        } else {
            SnapshotState::Available
        };
        let r = sqlx::query(
            "UPDATE snapshots SET state = $1, operation_id = $2, updated_at = $3 \
             WHERE id = $4 AND (state = $5 OR state = $6)",
        )
        .bind(state.as_str())
        .bind(op.id.to_string())
        .bind(time::now())
        .bind(snapshot.to_string())
        .bind(SnapshotState::Available.as_str())
        .bind(also.as_str())
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!(
                "snapshot {} is {}, not available",
                snap.name, snap.state
            )));
        }
        insert_operation(&mut tx, op).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn get_snapshot_by_id(&self, id: Uuid) -> Result<SnapshotRecord, StoreError> {
        let row = sqlx::query(&format!("{SELECT} WHERE s.id = $1"))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::not_found("snapshot", id.to_string()))?;
        snapshot_from_row(&row)
    }

    /// Finds a snapshot of `project` by id or by name.
    pub async fn get_snapshot(
        &self,
        project: &str,
        id_or_name: &str,
    ) -> Result<SnapshotRecord, StoreError> {
        let (column, value) = match Uuid::parse_str(id_or_name) {
            Ok(id) => ("s.id", id.to_string()),
            Err(_) => ("s.name", id_or_name.to_string()),
        };
        let row = sqlx::query(&format!("{SELECT} WHERE s.project = $1 AND {column} = $2"))
            .bind(project)
            .bind(value)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::not_found("snapshot", id_or_name))?;
        snapshot_from_row(&row)
    }

    /// Snapshots of a project (all projects when `None`), optionally of one instance, oldest
    /// first (so parents come before their children).
    pub async fn list_snapshots(
        &self,
        project: Option<&str>,
        instance: Option<Uuid>,
    ) -> Result<Vec<SnapshotRecord>, StoreError> {
        let mut conditions = Vec::new();
        let mut values = Vec::new();
        if let Some(p) = project {
            values.push(p.to_string());
            conditions.push(format!("s.project = ${}", values.len()));
        }
        if let Some(i) = instance {
            values.push(i.to_string());
            conditions.push(format!("s.instance_id = ${}", values.len()));
        }
        let filter = if conditions.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conditions.join(" AND "))
        };
        let sql = format!("{SELECT}{filter} ORDER BY s.created_at, s.name");
        let mut query = sqlx::query(&sql);
        for v in values {
            query = query.bind(v);
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter().map(snapshot_from_row).collect()
    }

    /// One page of the snapshots `scope` sees, optionally of one instance, oldest first.
    pub async fn list_snapshots_page(
        &self,
        scope: &Scope,
        instance: Option<Uuid>,
        page: &PageRequest,
    ) -> Result<Page<SnapshotRecord>, StoreError> {
        const KEY: Keyset =
            Keyset::ascending(&[KeyColumn::text("s.created_at"), KeyColumn::text("s.id")]);
        let mut binds = scope.values();
        let mut filter = scope.condition("s.project", 1);
        if let Some(i) = instance {
            binds.push(i.to_string());
            filter = format!("{filter} AND s.instance_id = ${}", binds.len());
        }
        let rows = KEY.fetch(&self.pool, page, SELECT, &filter, &binds).await?;
        rows.try_map(snapshot_from_row)
    }

    /// How many snapshots an instance has.
    pub async fn count_snapshots_of(&self, instance: Uuid) -> Result<u64, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM snapshots WHERE instance_id = $1")
            .bind(instance.to_string())
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<i64, _>("n")?.max(0) as u64)
    }

    /// The snapshots of an instance moved with it to `host` (a migration's commit).
    pub async fn move_snapshots(&self, instance: Uuid, host: &str) -> Result<u64, StoreError> {
        let r =
            sqlx::query("UPDATE snapshots SET host = $1, updated_at = $2 WHERE instance_id = $3")
                .bind(host)
                .bind(time::now())
                .bind(instance.to_string())
                .execute(&self.pool)
                .await?;
        Ok(r.rows_affected())
    }

    /// A project's snapshots: how many, and the bytes they store. The hook for the snapshot
    /// quota (count) and for metering (stored bytes, billed as snapshot GiB-hours).
    pub async fn project_snapshot_usage(&self, project: &str) -> Result<(u64, u64), StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n, CAST(COALESCE(SUM(stored_bytes), 0) AS BIGINT) AS bytes \
             FROM snapshots WHERE project = $1",
        )
        .bind(project)
        .fetch_one(&self.pool)
        .await?;
        Ok((
            row.try_get::<i64, _>("n")?.max(0) as u64,
            row.try_get::<i64, _>("bytes")?.max(0) as u64,
        ))
    }

    /// Records what the host measured, makes the snapshot `available` and its instance's
    /// current snapshot. Idempotent.
    pub async fn complete_snapshot(
        &self,
        id: Uuid,
        figures: &SnapshotFigures,
    ) -> Result<(), StoreError> {
        let snap = self.get_snapshot_by_id(id).await?;
        let now = time::now();
        let mut tx = self.begin().await?;
        sqlx::query(
            "UPDATE snapshots SET state = $1, operation_id = NULL, vm_pause_us = $2, \
             disk_layer_bytes = $3, memory_bytes = $4, memory_new_bytes = $5, stored_bytes = $6, \
             updated_at = $7 WHERE id = $8",
        )
        .bind(SnapshotState::Available.as_str())
        .bind(figures.vm_pause_us as i64)
        .bind(figures.disk_layer_bytes as i64)
        .bind(figures.memory_bytes as i64)
        .bind(figures.memory_new_bytes as i64)
        .bind(figures.stored_bytes as i64)
        .bind(&now)
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?;
        set_current(&mut tx, snap.instance_id, Some(id)).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Ends an operation on a snapshot: it shows `state` again and no operation.
    pub async fn end_snapshot_operation(
        &self,
        id: Uuid,
        state: SnapshotState,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE snapshots SET state = $1, operation_id = NULL, updated_at = $2 WHERE id = $3",
        )
        .bind(state.as_str())
        .bind(time::now())
        .bind(id.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The snapshot the instance's state descends from, if any.
    pub async fn current_snapshot(&self, instance: Uuid) -> Result<Option<Uuid>, StoreError> {
        let row = sqlx::query("SELECT current_snapshot FROM instances WHERE id = $1")
            .bind(instance.to_string())
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::not_found("instance", instance.to_string()))?;
        uuid_opt(row.try_get("current_snapshot")?)
    }

    /// Moves the instance in its tree (after a restore to `snapshot`).
    pub async fn set_current_snapshot(
        &self,
        instance: Uuid,
        snapshot: Option<Uuid>,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        set_current(&mut tx, instance, snapshot).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Removes a snapshot row: its children get its parent, and if it was its instance's
    /// current snapshot, its parent becomes current. Idempotent.
    pub async fn delete_snapshot_row(&self, id: Uuid) -> Result<(), StoreError> {
        let snap = match self.get_snapshot_by_id(id).await {
            Ok(s) => s,
            Err(StoreError::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        let parent = snap.parent_id.map(|p| p.to_string());
        let now = time::now();
        let mut tx = self.begin().await?;
        sqlx::query("UPDATE snapshots SET parent_id = $1, updated_at = $2 WHERE parent_id = $3")
            .bind(parent.clone())
            .bind(&now)
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE instances SET current_snapshot = $1, updated_at = $2 \
             WHERE id = $3 AND current_snapshot = $4",
        )
        .bind(parent)
        .bind(&now)
        .bind(snap.instance_id.to_string())
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM snapshots WHERE id = $1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Removes every snapshot row of an instance (its host deletes their files with the VM);
    /// returns how many there were.
    pub async fn delete_snapshots_of(&self, instance: Uuid) -> Result<u64, StoreError> {
        let mut tx = self.begin().await?;
        let r = sqlx::query("DELETE FROM snapshots WHERE instance_id = $1")
            .bind(instance.to_string())
            .execute(&mut *tx)
            .await?;
        set_current(&mut tx, instance, None).await?;
        tx.commit().await?;
        Ok(r.rows_affected())
    }
}

async fn set_current(
    tx: &mut Transaction<'_, Any>,
    instance: Uuid,
    snapshot: Option<Uuid>,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE instances SET current_snapshot = $1, updated_at = $2 WHERE id = $3")
        .bind(snapshot.map(|s| s.to_string()))
        .bind(time::now())
        .bind(instance.to_string())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests;
