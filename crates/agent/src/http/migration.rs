//! Live migration handlers: the target's `incoming`, the source's `start`, progress and
//! `cancel` (see [`crate::migration`]).

use super::{Json, Path};
use crate::agent::Agent;
use crate::error::{Error, Result};
use axum::extract::State;
use nimbus_agent_api::{IncomingReady, IncomingRequest, MigrateRequest, MigrationProgress};
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

/// `GET /vms/{id}/migration`.
pub async fn progress(
    State(agent): State<Agent>,
    Path(id): Path<Uuid>,
) -> Result<Json<MigrationProgress>> {
    Ok(Json(agent.vm(id)?.migration()))
}

/// `POST /vms/{id}/migration/cancel` (idempotent).
pub async fn cancel(
    State(agent): State<Agent>,
    Path(id): Path<Uuid>,
) -> Result<Json<MigrationProgress>> {
    Ok(Json(agent.vm(id)?.cancel_migration().await?))
}
