//! Routes for agents, not tenants.

use super::auth::AgentCaller;
use super::error::ApiJson;
use super::ApiError;
use crate::app::App;
use axum::extract::State;
use axum::Json;
use nimbus_agent_api::{RegisterHost, RegisterResponse};

/// An agent announces (or refreshes) its host.
pub async fn register_host(
    State(app): State<App>,
    _agent: AgentCaller,
    ApiJson(req): ApiJson<RegisterHost>,
) -> Result<Json<RegisterResponse>, ApiError> {
    Ok(Json(app.register_host(&req).await?))
}
