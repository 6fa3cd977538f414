//! Host and VM handlers: parse, call the manager or the VM's handle, answer.

use super::{Json, Path, Query};
use crate::agent::Agent;
use crate::error::{Error, Result};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use nimbus_agent_api::{ExecRequest, ExecResult, HostInventory, StopRequest, VmSpec, VmStatus};
use uuid::Uuid;

pub async fn host(State(agent): State<Agent>) -> Json<HostInventory> {
    Json(agent.inventory())
}

pub async fn list(State(agent): State<Agent>) -> Json<Vec<VmStatus>> {
    Json(agent.manager().list())
}

pub async fn show(State(agent): State<Agent>, Path(id): Path<Uuid>) -> Result<Json<VmStatus>> {
    Ok(Json(agent.vm(id)?.status()))
}

pub async fn define(
    State(agent): State<Agent>,
    Path(id): Path<Uuid>,
    Json(spec): Json<VmSpec>,
) -> Result<Json<VmStatus>> {
    Ok(Json(agent.manager().define(id, spec).await?))
}

/// Query of `DELETE /vms/{id}`.
#[derive(Debug, Default, serde::Deserialize)]
pub struct DeleteQuery {
    /// Leave the disk file (shared storage another host now uses).
    #[serde(default)]
    pub keep_disk: bool,
}

pub async fn delete(
    State(agent): State<Agent>,
    Path(id): Path<Uuid>,
    Query(q): Query<DeleteQuery>,
) -> Result<StatusCode> {
    if q.keep_disk {
        agent.manager().delete_keep_disk(id).await?;
    } else {
        agent.manager().delete(id).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

pub async fn start(State(agent): State<Agent>, Path(id): Path<Uuid>) -> Result<Json<VmStatus>> {
    Ok(Json(agent.vm(id)?.start().await?))
}

/// The body is optional: none means the default stop (graceful, 20 s).
pub async fn stop(
    State(agent): State<Agent>,
    Path(id): Path<Uuid>,
    body: Bytes,
) -> Result<Json<VmStatus>> {
    let req = if body.iter().all(u8::is_ascii_whitespace) {
        StopRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| Error::BadRequest(format!("invalid stop request: {e}")))?
    };
    Ok(Json(agent.vm(id)?.stop(req).await?))
}

pub async fn reboot(State(agent): State<Agent>, Path(id): Path<Uuid>) -> Result<Json<VmStatus>> {
    Ok(Json(agent.vm(id)?.reboot().await?))
}

pub async fn exec(
    State(agent): State<Agent>,
    Path(id): Path<Uuid>,
    Json(req): Json<ExecRequest>,
) -> Result<Json<ExecResult>> {
    Ok(Json(agent.vm(id)?.exec(&req).await?))
}
