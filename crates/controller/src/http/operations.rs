//! `/v1/operations`.

use super::error::{ApiPath, ApiQuery};
use super::paging::{page_request, Paged};
use super::ApiError;
use crate::app::{App, Caller};
use axum::extract::State;
use axum::Json;
use nimbus_api::{ErrorBody, OperationView, PageParams};

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

/// Shows an operation with its steps and progress.
#[utoipa::path(get, path = "/v1/operations/{operation}", tag = "operations",
    responses((status = 200, body = OperationView), (status = 404, body = ErrorBody)))]
pub async fn show(
    State(app): State<App>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<OperationView>, ApiError> {
    Ok(Json(app.get_operation(&caller, &id).await?))
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
