//! The audit middleware: every mutating call under `/v1` (not the agents' internal routes)
//! is recorded after it is answered: who (token), in which project, the route and the
//! concrete path, the target, the status, the client address. It also buffers the body
//! (within [`super::MAX_BODY_BYTES`], answering 413 beyond it) to name the target of creates.
//! Calls answered 429 (throttled, not processed) are not recorded. Streamed uploads
//! ([`STREAMED_ROUTES`]) pass through unbuffered: their target is in the path.

use super::auth::client_ip;
use super::ApiError;
use crate::app::{App, AppError, Caller};
use axum::body::Body;
use axum::extract::{FromRequestParts, MatchedPath, RawPathParams, Request, State};
use axum::http::request::Parts;
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use nimbus_api::{AuditEntry, ErrorCode};
use std::sync::{Arc, Mutex};

/// Where the authentication of a request leaves its caller for the audit entry.
#[derive(Clone, Default)]
pub struct AuditSlot(Arc<Mutex<Option<Caller>>>);

impl AuditSlot {
    pub fn set(&self, caller: &Caller) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(caller.clone());
    }

    fn take(&self) -> Option<Caller> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// Routes whose bodies are streams of any size (image bytes), never buffered here.
const STREAMED_ROUTES: &[&str] = &["/v1/images/{image}/upload"];

fn is_mutating(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The `name` field of a JSON body, if any (the target of a create).
fn body_name(bytes: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    v.get("name")?
        .as_str()
        .map(|s| s.chars().take(128).collect())
}

/// Records mutating calls; passes reads through untouched.
pub async fn record(State(app): State<App>, req: Request, next: Next) -> Response {
    let action_path = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string());
    let Some(route) = action_path.filter(|_| is_mutating(req.method())) else {
        return next.run(req).await;
    };
    if route.starts_with("/v1/internal/") {
        return next.run(req).await;
    }
    let (mut parts, body) = req.into_parts();
    let method = parts.method.to_string();
    let path = parts.uri.path().to_string();
    let ip = client_ip(&parts, &app.config().trusted_proxies);
    let params = path_params(&mut parts).await;
    let mut target = (!params.is_empty()).then(|| params.join("/"));
    let slot = AuditSlot::default();
    parts.extensions.insert(slot.clone());
    let response = if STREAMED_ROUTES.contains(&route.as_str()) {
        next.run(Request::from_parts(parts, body)).await
    } else {
        buffered(parts, body, &mut target, next).await
    };
    if response.status() == axum::http::StatusCode::TOO_MANY_REQUESTS {
        // Throttled calls were not processed; recording each would let a flood fill the log.
        return response;
    }
    let caller = slot.take();
    let entry = AuditEntry {
        id: uuid::Uuid::new_v4(),
        at: Utc::now(),
        token_id: caller.as_ref().map(|c| c.token_id.clone()),
        token_name: caller.as_ref().and_then(|c| c.token_name.clone()),
        project: caller.as_ref().map(|c| c.project.clone()),
        method: method.clone(),
        path,
        action: format!("{method} {route}"),
        target,
        status: response.status().as_u16(),
        client_ip: ip.map(|i| i.to_string()),
    };
    app.record_audit(&entry).await;
    response
}

/// Runs the request with its body buffered (within [`super::MAX_BODY_BYTES`], else 413),
/// naming the target from the body's `name` when the path has none.
async fn buffered(parts: Parts, body: Body, target: &mut Option<String>, next: Next) -> Response {
    match axum::body::to_bytes(body, super::MAX_BODY_BYTES).await {
        Ok(bytes) => {
            if target.is_none() {
                *target = body_name(&bytes);
            }
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Err(_) => ApiError(AppError::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "the request body is larger than {} KiB",
                super::MAX_BODY_BYTES / 1024
            ),
        ))
        .into_response(),
    }
}

/// Path parameter values, in order.
async fn path_params(parts: &mut Parts) -> Vec<String> {
    match RawPathParams::from_request_parts(parts, &()).await {
        Ok(params) => params.iter().map(|(_, v)| v.to_string()).collect(),
        Err(_) => Vec::new(),
    }
}
