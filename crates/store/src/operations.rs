//! Operations and their step logs (written through `leases::FencedLog`).

use crate::instances::parse_uuid;
use crate::page::{Page, PageRequest, NEWEST_FIRST};
use crate::{time, Scope, Store, StoreError};
use nimbus_api::{OperationKind, OperationState, OperationView, StepState, StepView};
use nimbus_ops::{LogSnapshot, StepRecord};
use serde_json::Value;
use sqlx::{Any, Row, Transaction};
use uuid::Uuid;

/// A new operation.
#[derive(Debug, Clone)]
pub struct NewOperation {
    pub id: Uuid,
    pub kind: OperationKind,
    pub project: String,
    pub target_id: Uuid,
    pub target_name: String,
    pub params: Value,
}

pub(crate) async fn insert_operation(
    tx: &mut Transaction<'_, Any>,
    op: &NewOperation,
) -> Result<(), StoreError> {
    let now = time::now();
    sqlx::query(
        "INSERT INTO operations (id, kind, project, target_id, target_name, state, params, \
         message, error, cancel_requested, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, NULL, 0, $8, $9)",
    )
    .bind(op.id.to_string())
    .bind(op.kind.as_str())
    .bind(&op.project)
    .bind(op.target_id.to_string())
    .bind(&op.target_name)
    .bind(OperationState::Running.as_str())
    .bind(op.params.to_string())
    .bind(&now)
    .bind(&now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn corrupt(what: &str, v: &str) -> StoreError {
    StoreError::Corrupt(format!("{what} {v:?}"))
}

fn step_from_row(r: &sqlx::any::AnyRow) -> Result<StepView, StoreError> {
    let state: String = r.try_get("state")?;
    let output: Option<String> = r.try_get("output")?;
    Ok(StepView {
        name: r.try_get("name")?,
        state: StepState::parse(&state).ok_or_else(|| corrupt("step state", &state))?,
        output: output
            .map(|o| serde_json::from_str(&o))
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("step output: {e}")))?,
        error: r.try_get("error")?,
        started_at: time::parse_opt(r.try_get("started_at")?)?,
        finished_at: time::parse_opt(r.try_get("finished_at")?)?,
    })
}

fn op_from_row(r: &sqlx::any::AnyRow, steps: Vec<StepView>) -> Result<OperationView, StoreError> {
    let kind: String = r.try_get("kind")?;
    let state: String = r.try_get("state")?;
    let steps_done = steps.iter().filter(|s| s.state == StepState::Done).count() as u32;
    Ok(OperationView {
        id: parse_uuid(&r.try_get::<String, _>("id")?)?,
        kind: OperationKind::parse(&kind).ok_or_else(|| corrupt("operation kind", &kind))?,
        state: OperationState::parse(&state).ok_or_else(|| corrupt("operation state", &state))?,
        target_id: parse_uuid(&r.try_get::<String, _>("target_id")?)?,
        target_name: r.try_get("target_name")?,
        project: r.try_get("project")?,
        message: r.try_get("message")?,
        steps_done,
        steps_total: steps.len() as u32,
        error: r.try_get("error")?,
        cancel_requested: r.try_get::<i64, _>("cancel_requested")? != 0,
        steps,
        created_at: time::parse(&r.try_get::<String, _>("created_at")?)?,
        updated_at: time::parse(&r.try_get::<String, _>("updated_at")?)?,
    })
}

impl Store {
    async fn steps_of(&self, id: Uuid) -> Result<Vec<StepView>, StoreError> {
        let rows =
            sqlx::query("SELECT * FROM operation_steps WHERE operation_id = $1 ORDER BY idx")
                .bind(id.to_string())
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(step_from_row).collect()
    }

    /// The operation with this id, if `scope` sees it.
    pub async fn get_operation(
        &self,
        scope: &Scope,
        id: Uuid,
    ) -> Result<OperationView, StoreError> {
        let sql = format!(
            "SELECT * FROM operations WHERE id = $1 AND {}",
            scope.condition("project", 2)
        );
        let row = scope
            .bind(sqlx::query(&sql).bind(id.to_string()))
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::not_found("operation", id.to_string()))?;
        let steps = self.steps_of(id).await?;
        op_from_row(&row, steps)
    }

    /// Records an operation that acts on no instance (e.g. a host drain).
    pub async fn insert_operation(&self, op: &NewOperation) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        insert_operation(&mut tx, op).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The parameters an operation was started with.
    pub async fn operation_params(&self, id: Uuid) -> Result<Value, StoreError> {
        let row = sqlx::query("SELECT params FROM operations WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::not_found("operation", id.to_string()))?;
        let text: String = row.try_get("params")?;
        serde_json::from_str(&text)
            .map_err(|e| StoreError::Corrupt(format!("operation params: {e}")))
    }

    /// Operations `scope` sees, newest first, at most `limit`.
    pub async fn list_operations(
        &self,
        scope: &Scope,
        limit: u32,
    ) -> Result<Vec<OperationView>, StoreError> {
        Ok(self
            .list_operations_page(scope, &PageRequest::first(limit))
            .await?
            .items)
    }

    /// One page of the operations `scope` sees, newest first.
    pub async fn list_operations_page(
        &self,
        scope: &Scope,
        page: &PageRequest,
    ) -> Result<Page<OperationView>, StoreError> {
        let rows = NEWEST_FIRST
            .fetch_in(
                &self.pool,
                page,
                "SELECT * FROM operations",
                scope,
                "project",
            )
            .await?;
        let mut out = Vec::with_capacity(rows.items.len());
        for r in &rows.items {
            let id = parse_uuid(&r.try_get::<String, _>("id")?)?;
            out.push(op_from_row(r, self.steps_of(id).await?)?);
        }
        Ok(Page {
            items: out,
            next: rows.next,
        })
    }

    /// Operations not yet final: resumed at controller start.
    pub async fn unfinished_operations(&self) -> Result<Vec<OperationView>, StoreError> {
        let rows = sqlx::query(
            "SELECT id FROM operations WHERE state = $1 OR state = $2 ORDER BY created_at",
        )
        .bind(OperationState::Running.as_str())
        .bind(OperationState::Unwinding.as_str())
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::new();
        for r in rows {
            out.push(
                self.get_operation(&Scope::All, parse_uuid(&r.try_get::<String, _>("id")?)?)
                    .await?,
            );
        }
        Ok(out)
    }

    /// Asks an operation `scope` sees to stop; the engine notices between steps or inside
    /// long steps.
    pub async fn request_cancel(&self, scope: &Scope, id: Uuid) -> Result<(), StoreError> {
        let sql = format!(
            "UPDATE operations SET cancel_requested = 1, updated_at = $1 WHERE id = $2 AND {}",
            scope.condition("project", 3)
        );
        let r = scope
            .bind(sqlx::query(&sql).bind(time::now()).bind(id.to_string()))
            .execute(&self.pool)
            .await?;
        if r.rows_affected() == 0 {
            return Err(StoreError::not_found("operation", id.to_string()));
        }
        Ok(())
    }
}

/// The log of operation `op` as the engine reads it.
pub(crate) async fn load_snapshot(store: &Store, op: Uuid) -> Result<LogSnapshot, StoreError> {
    let view = store.get_operation(&Scope::All, op).await?;
    Ok(LogSnapshot {
        state: view.state,
        error: view.error,
        steps: view
            .steps
            .into_iter()
            .map(|s| StepRecord {
                name: s.name,
                state: s.state,
                output: s.output,
                error: s.error,
            })
            .collect(),
    })
}

/// The start and end times a step in `state` records (now, or kept).
pub(crate) fn step_times(state: StepState) -> (Option<String>, Option<String>) {
    let now = time::now();
    match state {
        StepState::Running => (Some(now), None),
        StepState::Pending => (None, None),
        _ => (None, Some(now)),
    }
}

impl Store {
    /// A user asked to cancel operation `op`.
    pub(crate) async fn cancel_requested_of(&self, op: Uuid) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT cancel_requested FROM operations WHERE id = $1")
            .bind(op.to_string())
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => r.try_get::<i64, _>("cancel_requested")? != 0,
            None => false,
        })
    }
}
