//! Live migration handlers: the target's `incoming`, the source's `start`, progress and
//! `cancel` (see [`crate::migration`]).

use super::{Json, Path};
use crate::agent::Agent;
use crate::error::{Error, Result};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use nimbus_agent_api::{IncomingReady, IncomingRequest, MigrateRequest, MigrationProgress};
use serde::Deserialize;
use std::time::Duration;
use uuid::Uuid;

/// `POST /vms/{id}/migration/incoming`: define the VM and wait for it.
pub async fn incoming(
    State(agent): State<Agent>,
    Path(id): Path<Uuid>,
    Json(req): Json<IncomingRequest>,
) -> Result<Json<IncomingReady>> {
    if req.spec.id != id {
        return Err(Error::BadRequest(format!(
            "spec id {} does not match the path id {id}",
            req.spec.id
        )));
    }
    let host = agent.migration_host()?;
    Ok(Json(agent.manager().incoming(id, req, &host).await?))
}

/// `POST /vms/{id}/migration/start`: send the VM; answers at once.
pub async fn start(
    State(agent): State<Agent>,
    Path(id): Path<Uuid>,
    Json(req): Json<MigrateRequest>,
) -> Result<Json<MigrationProgress>> {
    Ok(Json(agent.vm(id)?.migrate(req).await?))
}

/// Query of `GET /vms/{id}/migration`.
#[derive(Deserialize)]
pub struct ProgressQuery {
    /// Wait up to this many milliseconds (at most [`MAX_WAIT_FINAL_MS`]) for the migration
    /// to end before answering; 0 answers at once.
    #[serde(default)]
    wait_final_ms: u64,
}

/// The longest a progress request is held open.
const MAX_WAIT_FINAL_MS: u64 = 5_000;

/// `GET /vms/{id}/migration[?wait_final_ms=N]`.
pub async fn progress(
    State(agent): State<Agent>,
    Path(id): Path<Uuid>,
    query: std::result::Result<Query<ProgressQuery>, QueryRejection>,
) -> Result<Json<MigrationProgress>> {
    let Query(q) = query.map_err(|e| Error::BadRequest(e.body_text()))?;
    let vm = agent.vm(id)?;
    if q.wait_final_ms == 0 {
        return Ok(Json(vm.migration()));
    }
    let within = Duration::from_millis(q.wait_final_ms.min(MAX_WAIT_FINAL_MS));
    Ok(Json(vm.migration_when_final(within).await))
}

/// `POST /vms/{id}/migration/cancel` (idempotent).
pub async fn cancel(
    State(agent): State<Agent>,
    Path(id): Path<Uuid>,
) -> Result<Json<MigrationProgress>> {
    Ok(Json(agent.vm(id)?.cancel_migration().await?))
}
