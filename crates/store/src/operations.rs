//! Operations and their step logs; the database-backed [`OperationLog`].

use crate::instances::parse_uuid;
use crate::page::{Page, PageRequest, NEWEST_FIRST};
use crate::{time, Scope, Store, StoreError};
use async_trait::async_trait;
use nimbus_api::{OperationKind, OperationState, OperationView, StepState, StepView};
use nimbus_ops::{LogError, LogSnapshot, OperationLog, StepRecord};
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
        let mut tx = self.pool.begin().await?;
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

fn log_err(e: impl std::fmt::Display) -> LogError {
    LogError(e.to_string())
}

#[async_trait]
impl OperationLog for Store {
    async fn load(&self, op: Uuid) -> Result<LogSnapshot, LogError> {
        let view = self.get_operation(&Scope::All, op).await.map_err(log_err)?;
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

    async fn init_steps(&self, op: Uuid, names: &[&str]) -> Result<(), LogError> {
        let existing = self.steps_of(op).await.map_err(log_err)?;
        if !existing.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await.map_err(log_err)?;
        for (i, name) in names.iter().enumerate() {
            sqlx::query(
                "INSERT INTO operation_steps (operation_id, idx, name, state, output, error, started_at, finished_at) \
                 VALUES ($1, $2, $3, $4, NULL, NULL, NULL, NULL)",
            )
            .bind(op.to_string())
            .bind(i as i64)
            .bind(*name)
            .bind(StepState::Pending.as_str())
            .execute(&mut *tx)
            .await
            .map_err(log_err)?;
        }
        tx.commit().await.map_err(log_err)
    }

    async fn set_step(
        &self,
        op: Uuid,
        index: usize,
        state: StepState,
        output: Option<&Value>,
        error: Option<&str>,
    ) -> Result<(), LogError> {
        let now = time::now();
        let (started, finished) = match state {
            StepState::Running => (Some(now.clone()), None),
            StepState::Pending => (None, None),
            _ => (None, Some(now.clone())),
        };
        sqlx::query(
            "UPDATE operation_steps SET state = $1, output = COALESCE($2, output), error = $3, \
             started_at = COALESCE($4, started_at), finished_at = $5 \
             WHERE operation_id = $6 AND idx = $7",
        )
        .bind(state.as_str())
        .bind(output.map(|o| o.to_string()))
        .bind(error.map(str::to_string))
        .bind(started)
        .bind(finished)
        .bind(op.to_string())
        .bind(index as i64)
        .execute(&self.pool)
        .await
        .map_err(log_err)?;
        sqlx::query("UPDATE operations SET updated_at = $1 WHERE id = $2")
            .bind(now)
            .bind(op.to_string())
            .execute(&self.pool)
            .await
            .map_err(log_err)?;
        Ok(())
    }

    async fn set_state(
        &self,
        op: Uuid,
        state: OperationState,
        error: Option<&str>,
    ) -> Result<(), LogError> {
        sqlx::query(
            "UPDATE operations SET state = $1, error = COALESCE($2, error), updated_at = $3 WHERE id = $4",
        )
        .bind(state.as_str())
        .bind(error.map(str::to_string))
        .bind(time::now())
        .bind(op.to_string())
        .execute(&self.pool)
        .await
        .map_err(log_err)?;
        Ok(())
    }

    async fn set_message(&self, op: Uuid, message: &str) -> Result<(), LogError> {
        sqlx::query("UPDATE operations SET message = $1, updated_at = $2 WHERE id = $3")
            .bind(message)
            .bind(time::now())
            .bind(op.to_string())
            .execute(&self.pool)
            .await
            .map_err(log_err)?;
        Ok(())
    }

    async fn cancel_requested(&self, op: Uuid) -> Result<bool, LogError> {
        let row = sqlx::query("SELECT cancel_requested FROM operations WHERE id = $1")
            .bind(op.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(log_err)?;
        Ok(match row {
            Some(r) => r.try_get::<i64, _>("cancel_requested").map_err(log_err)? != 0,
            None => false,
        })
    }
}
