//! `/v1/controllers`.

use super::ApiError;
use crate::app::{App, Caller};
use axum::extract::State;
use axum::Json;
use nimbus_api::{ControllerView, ErrorBody};

/// Lists the live controllers sharing the database: version, heartbeat age, operations
/// owned (admin).
#[utoipa::path(get, path = "/v1/controllers", tag = "controllers",
    responses((status = 200, body = [ControllerView]), (status = 403, body = ErrorBody)))]
pub async fn list(
    State(app): State<App>,
    caller: Caller,
) -> Result<Json<Vec<ControllerView>>, ApiError> {
    Ok(Json(app.list_controllers(&caller).await?))
}
