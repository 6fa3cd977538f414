//! Handlers of snapshots moving with their VM (see [`crate::snapshot::moving`]).

use super::{Json, Path, Query};
use crate::agent::Agent;
use crate::error::Result;
use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;
use nimbus_agent_api::{
    ExportSnapshotSet, ImportSnapshotSet, ImportedSnapshotSet, MissingChunks, SnapshotSetInventory,
};
use uuid::Uuid;

/// `GET /vms/{id}/snapshot-set`
pub async fn inventory(
    State(agent): State<Agent>,
    Path(id): Path<Uuid>,
) -> Result<Json<SnapshotSetInventory>> {
    Ok(Json(agent.manager().snapshot_set(id)?))
}

/// `POST /chunks/missing`
pub async fn missing(
    State(agent): State<Agent>,
    Json(req): Json<MissingChunks>,
) -> Result<Json<MissingChunks>> {
    Ok(Json(agent.manager().missing_chunks(&req)?))
}

/// `POST /vms/{id}/snapshot-set/export`: the set as a stream of frames.
pub async fn export(
    State(agent): State<Agent>,
    Path(id): Path<Uuid>,
    Json(req): Json<ExportSnapshotSet>,
) -> Result<Response> {
    let rx = agent.manager().export_snapshot_set(id, &req).await?;
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream")],
        Body::from_stream(rx),
    )
        .into_response())
}

/// `PUT /vms/{id}/snapshot-set?part=P`: receive (part of) the set of a VM arriving here.
pub async fn import(
    State(agent): State<Agent>,
    Path(id): Path<Uuid>,
    Query(query): Query<ImportSnapshotSet>,
    body: Body,
) -> Result<Json<ImportedSnapshotSet>> {
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    let mut reader = tokio_util::io::StreamReader::new(stream);
    Ok(Json(
        agent
            .manager()
            .import_snapshot_set(id, query.part, &mut reader)
            .await?,
    ))
}
