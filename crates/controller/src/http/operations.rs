//! `/v1/operations`.

use super::error::{ApiPath, ApiQuery};
use super::paging::{page_request, Paged};
use super::ApiError;
use crate::app::{App, AppError, Caller};
use axum::extract::State;
use axum::Json;
use nimbus_api::{
    ErrorBody, OperationView, OperationWaitParams, PageParams, MAX_OPERATION_WAIT_SECS,
};

/// Lists the project's operations, newest first (paged).
#[utoipa::path(get, path = "/v1/operations", tag = "operations", params(PageParams),
    responses((status = 200, body = [OperationView])))]
pub async fn list(
    State(app): State<App>,
    caller: Caller,
    ApiQuery(q): ApiQuery<PageParams>,
) -> Result<Paged<OperationView>, ApiError> {
    let page = page_request("operations", &q)?;
    Ok(Paged::new(
        "operations",
        app.list_operations(&caller, &page).await?,
    ))
}

/// Shows an operation with its steps and progress; with `wait_secs`, once it changed or
/// ended (a long poll).
#[utoipa::path(get, path = "/v1/operations/{operation}", tag = "operations",
    params(OperationWaitParams),
    responses((status = 200, body = OperationView), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn show(
    State(app): State<App>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<OperationWaitParams>,
) -> Result<Json<OperationView>, ApiError> {
    let wait = q.wait_secs.unwrap_or(0);
    if wait > MAX_OPERATION_WAIT_SECS {
        return Err(AppError::bad_request(format!(
            "wait_secs is {wait}; it can be at most {MAX_OPERATION_WAIT_SECS}"
        ))
        .into());
    }
    let wait = std::time::Duration::from_secs(wait.into());
    Ok(Json(app.wait_operation(&caller, &id, wait).await?))
}

/// Asks an operation to stop and undo what it did.
#[utoipa::path(post, path = "/v1/operations/{operation}/cancel", tag = "operations",
    responses((status = 200, body = OperationView), (status = 409, body = ErrorBody)))]
pub async fn cancel(
    State(app): State<App>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<OperationView>, ApiError> {
    Ok(Json(app.cancel_operation(&caller, &id).await?))
}
