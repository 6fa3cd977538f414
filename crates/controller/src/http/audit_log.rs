//! `GET /v1/audit` (admin).

use super::error::ApiQuery;
use super::paging::{page_request, Paged};
use super::ApiError;
use crate::app::{App, Caller};
use axum::extract::State;
use chrono::{DateTime, Utc};
use nimbus_api::{AuditEntry, ErrorBody, PageParams};
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
}

/// Lists mutating API calls, newest first (paged).
#[utoipa::path(get, path = "/v1/audit", tag = "tenancy", params(AuditQuery, PageParams),
    responses((status = 200, body = [AuditEntry]), (status = 403, body = ErrorBody)))]
pub async fn list(
    State(app): State<App>,
    caller: Caller,
    ApiQuery(q): ApiQuery<AuditQuery>,
    ApiQuery(p): ApiQuery<PageParams>,
) -> Result<Paged<AuditEntry>, ApiError> {
    let page = page_request("audit", &p)?;
    Ok(Paged::new(
        "audit",
        app.list_audit(&caller, q.since, &page).await?,
    ))
}
