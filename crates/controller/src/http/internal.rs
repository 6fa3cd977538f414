//! Routes for agents and for other controllers, not tenants.

use super::auth::{AgentCaller, PeerController};
use super::error::ApiJson;
use super::ApiError;
use crate::app::App;
use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use nimbus_agent_api::snapshot_move::{ExportSnapshotSet, SnapshotSetInventory};
use nimbus_agent_api::{
    EnrolRequest, EnrolResponse, RegisterHost, RegisterResponse, UsageAck, UsageBatch,
};

/// The cloud's CA certificate (public): a new host fetches it before it enrols and checks
/// it against the fingerprint of its join token.
pub async fn ca_certificate(State(app): State<App>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/x-pem-file")],
        app.tls().ca.cert_pem().to_string(),
    )
        .into_response()
}

/// A new host enrols with a join token: its CSR is signed for its name and address.
pub async fn enrol(
    State(app): State<App>,
    ApiJson(req): ApiJson<EnrolRequest>,
) -> Result<Json<EnrolResponse>, ApiError> {
    Ok(Json(app.enrol_host(&req).await?))
}

/// An agent announces (or refreshes) its host: the host of its certificate, at an address
/// of its certificate.
pub async fn register_host(
    State(app): State<App>,
    agent: AgentCaller,
    ApiJson(req): ApiJson<RegisterHost>,
) -> Result<Json<RegisterResponse>, ApiError> {
    app.check_registration(&agent.0, &req)?;
    Ok(Json(app.register_host(&req).await?))
}

/// An agent pushes usage samples of its own host (stored once each; resending is
/// harmless).
pub async fn usage_samples(
    State(app): State<App>,
    agent: AgentCaller,
    ApiJson(batch): ApiJson<UsageBatch>,
) -> Result<Json<UsageAck>, ApiError> {
    if batch.host != agent.0.name {
        tracing::warn!(
            host = agent.0.name,
            claimed = batch.host,
            "usage samples refused: another host's name"
        );
        return Err(ApiError(crate::app::AppError::new(
            nimbus_api::ErrorCode::Forbidden,
            format!(
                "this certificate is host {:?}'s: it cannot report for {:?}",
                agent.0.name, batch.host
            ),
        )));
    }
    Ok(Json(app.ingest_usage(&batch).await?))
}

/// An agent fetches the bytes of an uploaded image, by digest (streamed from the file;
/// fetched from another controller first when this one lacks them).
pub async fn image_blob(
    State(app): State<App>,
    _agent: AgentCaller,
    super::error::ApiPath(hex): super::error::ApiPath<String>,
) -> Result<Response, ApiError> {
    let (len, file) = app.open_image_blob(&hex).await?;
    Ok(blob_response(len, file))
}

/// Another controller copies the bytes of an uploaded image this one holds.
pub async fn peer_image_blob(
    State(app): State<App>,
    _peer: PeerController,
    super::error::ApiPath(hex): super::error::ApiPath<String>,
) -> Result<Response, ApiError> {
    let (len, file) = app.open_held_image_blob(&hex).await?;
    Ok(blob_response(len, file))
}

/// Another controller asks what the replica of a snapshot this one holds is made of: every
/// memory chunk of the VM's replicated snapshots, so it can ask for the ones it lacks only.
pub async fn peer_replica_inventory(
    State(app): State<App>,
    _peer: PeerController,
    super::error::ApiPath((vm, snapshot)): super::error::ApiPath<(uuid::Uuid, uuid::Uuid)>,
) -> Result<Json<SnapshotSetInventory>, ApiError> {
    let set = held_replica(&app, vm, snapshot)?;
    Ok(Json(SnapshotSetInventory {
        snapshots: set.snapshots.len() as u32,
        layered: true,
        chunks: set.chunks,
    }))
}

/// Another controller copies the replica of a snapshot this one holds: the frames of the
/// VM's replicated snapshots, as a restart sends them to a host, without the layers and
/// chunks it says it holds already.
pub async fn peer_replica(
    State(app): State<App>,
    _peer: PeerController,
    super::error::ApiPath((vm, snapshot)): super::error::ApiPath<(uuid::Uuid, uuid::Uuid)>,
    ApiJson(want): ApiJson<ExportSnapshotSet>,
) -> Result<Response, ApiError> {
    let set = held_replica(&app, vm, snapshot)?.without_layers(&want.skip_layers);
    let body = Body::from_stream(app.replicas().stream(set, want.chunks));
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response())
}

/// The restore set of a replica this controller holds (404 when it does not).
fn held_replica(
    app: &App,
    vm: uuid::Uuid,
    snapshot: uuid::Uuid,
) -> Result<crate::app::replicas::send::RestoreSet, ApiError> {
    app.replicas().restore_set(vm, snapshot).map_err(|e| {
        ApiError(crate::app::AppError::not_found(format!(
            "this controller holds no replica of snapshot {snapshot}: {e}"
        )))
    })
}

fn blob_response(len: u64, file: tokio::fs::File) -> Response {
    let body = Body::from_stream(tokio_util::io::ReaderStream::with_capacity(file, 1 << 20));
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        body,
    )
        .into_response()
}
