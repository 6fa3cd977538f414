//! Bearer-token extraction.

use super::ApiError;
use crate::app::{App, Caller};
use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

/// The token of `Authorization: Bearer <token>`, if present.
pub fn bearer(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get(AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

impl FromRequestParts<App> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        Ok(app.authenticate(bearer(parts)).await?)
    }
}

/// Marker extractor: the caller is an agent holding the cluster's agent token.
pub struct AgentCaller;

impl FromRequestParts<App> for AgentCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        app.authenticate_agent(bearer(parts))?;
        Ok(AgentCaller)
    }
}
