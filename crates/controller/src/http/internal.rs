//! Routes for agents, not tenants.

use super::auth::AgentCaller;
use super::error::ApiJson;
use super::ApiError;
use crate::app::App;
use axum::extract::State;
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
