//! `/v1/operations`.

use super::error::{ApiPath, ApiQuery};
use super::ApiError;
use crate::app::{App, Caller};
use axum::extract::State;
use axum::Json;
use nimbus_api::{ErrorBody, OperationView};
use serde::Deserialize;

/// How many operations to list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ListQuery {
    pub limit: Option<u32>,
}

/// Lists the project's operations, newest first.
#[utoipa::path(get, path = "/v1/operations", tag = "operations", params(ListQuery),
    responses((status = 200, body = [OperationView])))]
pub async fn list(
    State(app): State<App>,
    caller: Caller,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Vec<OperationView>>, ApiError> {
    Ok(Json(
        app.list_operations(&caller, q.limit.unwrap_or(50)).await?,
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
