//! Routes for agents, not tenants.

use super::auth::AgentCaller;
use super::error::ApiJson;
use super::ApiError;
use crate::app::App;
use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use nimbus_agent_api::{RegisterHost, RegisterResponse, UsageAck, UsageBatch};

/// An agent announces (or refreshes) its host.
pub async fn register_host(
    State(app): State<App>,
    _agent: AgentCaller,
    ApiJson(req): ApiJson<RegisterHost>,
) -> Result<Json<RegisterResponse>, ApiError> {
    Ok(Json(app.register_host(&req).await?))
}

/// An agent pushes usage samples (stored once each; resending is harmless).
pub async fn usage_samples(
    State(app): State<App>,
    _agent: AgentCaller,
    ApiJson(batch): ApiJson<UsageBatch>,
) -> Result<Json<UsageAck>, ApiError> {
    Ok(Json(app.ingest_usage(&batch).await?))
}

/// An agent fetches the bytes of an uploaded image, by digest (streamed from the file).
pub async fn image_blob(
    State(app): State<App>,
    _agent: AgentCaller,
    super::error::ApiPath(hex): super::error::ApiPath<String>,
) -> Result<Response, ApiError> {
    let (len, file) = app.open_image_blob(&hex).await?;
    let body = Body::from_stream(tokio_util::io::ReaderStream::with_capacity(file, 1 << 20));
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        body,
    )
        .into_response())
}
