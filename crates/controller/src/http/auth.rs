//! Authentication of API calls: the bearer token, the project a call acts in
//! (`?project=P`), the reader role's read-only rule, and throttling of repeated failures.

use super::audit::AuditSlot;
use super::ApiError;
use crate::app::{App, AppError, Caller};
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header::{AUTHORIZATION, RETRY_AFTER};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use nimbus_api::ErrorCode;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

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

/// The TCP peer's address (absent when the router is called without a socket, in tests).
pub fn client_ip(parts: &Parts) -> Option<IpAddr> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

/// The `project` query parameter: the project an admin acts in.
fn requested_project(parts: &Parts) -> Option<&str> {
    parts
        .uri
        .query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix("project="))
        .filter(|p| !p.is_empty())
}

fn is_read(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

impl FromRequestParts<App> for Caller {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        let ip = client_ip(parts);
        let throttle = app.auth_throttle();
        if let Err(wait) = throttle.check(ip, Instant::now()) {
            let err = AppError::new(
                ErrorCode::TooManyRequests,
                format!("too many failed authentications from this address; retry in {wait} s"),
            );
            let mut resp = ApiError(err).into_response();
            resp.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(wait));
            return Err(resp);
        }
        let caller = match app.authenticate(bearer(parts)).await {
            Ok(c) => c,
            Err(e) => {
                if e.code == ErrorCode::Unauthorized {
                    throttle.record_failure(ip, Instant::now());
                }
                return Err(ApiError(e).into_response());
            }
        };
        let slot = parts.extensions.get::<AuditSlot>().cloned();
        // Recorded before the project check, so that refused attempts name their token.
        if let Some(slot) = &slot {
            slot.set(&caller);
        }
        let caller = app
            .act_in(caller, requested_project(parts))
            .await
            .map_err(|e| ApiError(e).into_response())?;
        if let Some(slot) = &slot {
            slot.set(&caller);
        }
        if !is_read(&parts.method) {
            caller
                .require_write()
                .map_err(|e| ApiError(e).into_response())?;
        }
        Ok(caller)
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
