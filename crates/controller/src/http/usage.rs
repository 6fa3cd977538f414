//! `/v1/usage`.

use super::error::ApiQuery;
use super::ApiError;
use crate::app::{App, Caller};
use axum::extract::State;
use axum::Json;
use nimbus_api::{ErrorBody, UsageQuery, UsageReport};

/// Usage per instance and in total over `[from, to)`: vCPU-seconds allocated, CPU seconds
/// used, memory MiB-seconds, disk and snapshot GiB-hours, network bytes. Admins see every
/// project (or the one named); other callers their own.
#[utoipa::path(get, path = "/v1/usage", tag = "usage", params(UsageQuery),
    responses((status = 200, body = UsageReport), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub async fn report(
    State(app): State<App>,
    caller: Caller,
    ApiQuery(q): ApiQuery<UsageQuery>,
) -> Result<Json<UsageReport>, ApiError> {
    Ok(Json(app.usage_report(&caller, &q).await?))
}
