//! `GET /v1/audit` (admin).

use super::error::ApiQuery;
use super::ApiError;
use crate::app::{App, Caller};
use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use nimbus_api::{AuditEntry, ErrorBody};
use serde::Deserialize;

/// Filters of the audit log.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct AuditQuery {
    /// Only this project's calls (default: every project). Read by authentication, like
    /// `project` on every route.
    #[allow(dead_code)]
    pub project: Option<String>,
    /// Only calls at or after this instant (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    /// At most this many entries, newest first (default 100).
    pub limit: Option<u32>,
}

/// Lists mutating API calls, newest first.
#[utoipa::path(get, path = "/v1/audit", tag = "tenancy", params(AuditQuery),
    responses((status = 200, body = [AuditEntry]), (status = 403, body = ErrorBody)))]
pub async fn list(
    State(app): State<App>,
    caller: Caller,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Json<Vec<AuditEntry>>, ApiError> {
    Ok(Json(
        app.list_audit(&caller, q.since, q.limit.unwrap_or(100))
            .await?,
    ))
}
