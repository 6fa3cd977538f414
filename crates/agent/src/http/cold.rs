//! Cold migration handlers (see [`crate::migration::cold`]).

use super::{Json, Path};
use crate::agent::Agent;
use crate::error::{Error, Result};
use crate::migration::cold::{self, DISK_DIGEST_HEADER};
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use nimbus_agent_api::{ColdIncomingRequest, VmStatus};
use uuid::Uuid;

/// `PUT /vms/{id}/cold`: define the stopped VM arriving here.
pub async fn incoming(
    State(agent): State<Agent>,
    Path(id): Path<Uuid>,
    Json(req): Json<ColdIncomingRequest>,
) -> Result<Json<VmStatus>> {
    Ok(Json(agent.manager().cold_incoming(id, req).await?))
}

/// `GET /vms/{id}/disk`: the stopped VM's own disk, streamed, with its digest.
pub async fn export(State(agent): State<Agent>, Path(id): Path<Uuid>) -> Result<Response> {
    let export = cold::export(&*agent.vm(id)?).await?;
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(export.file));
    Ok((
        [
            (header::CONTENT_LENGTH, export.len.to_string()),
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (
                header::HeaderName::from_static(DISK_DIGEST_HEADER),
                export.digest,
            ),
        ],
        body,
    )
        .into_response())
}

/// `PUT /vms/{id}/disk`: the disk of a VM defined here by `PUT /vms/{id}/cold`.
pub async fn import(
    State(agent): State<Agent>,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode> {
    let digest = headers
        .get(DISK_DIGEST_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| Error::BadRequest(format!("the {DISK_DIGEST_HEADER} header is missing")))?
        .to_string();
    cold::import(&*agent.vm(id)?, body.into_data_stream(), &digest).await?;
    Ok(StatusCode::NO_CONTENT)
}
