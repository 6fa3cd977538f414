//! Checkpoint handlers: snapshot, restore, delete a snapshot, clone from one.

use super::{Json, Path};
use crate::agent::Agent;
use crate::error::Result;
use axum::extract::State;
use nimbus_agent_api::{
    CloneRequest, DeleteSnapshotResult, RestoreRequest, RestoreResult, SnapshotRequest,
    SnapshotResult, VmStatus,
};
use uuid::Uuid;

pub async fn take(
    State(agent): State<Agent>,
    Path(id): Path<Uuid>,
    Json(req): Json<SnapshotRequest>,
) -> Result<Json<SnapshotResult>> {
    let result = agent
        .manager()
        .snapshot(id, &req, agent.qemu_version())
        .await?;
    Ok(Json(result))
}

pub async fn restore(
    State(agent): State<Agent>,
    Path((id, sid)): Path<(Uuid, Uuid)>,
    Json(req): Json<RestoreRequest>,
) -> Result<Json<RestoreResult>> {
    Ok(Json(agent.manager().restore(id, sid, &req).await?))
}

pub async fn delete(
    State(agent): State<Agent>,
    Path((id, sid)): Path<(Uuid, Uuid)>,
) -> Result<Json<DeleteSnapshotResult>> {
    Ok(Json(agent.manager().delete_snapshot(id, sid).await?))
}

pub async fn clone(
    State(agent): State<Agent>,
    Path(id): Path<Uuid>,
    Json(req): Json<CloneRequest>,
) -> Result<Json<VmStatus>> {
    if req.spec.id != id {
        return Err(crate::error::Error::BadRequest(format!(
            "the clone's spec id {} is not the path's {id}",
            req.spec.id
        )));
    }
    Ok(Json(agent.manager().clone_vm(&req).await?))
}
