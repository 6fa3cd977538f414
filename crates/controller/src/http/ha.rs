//! `/v1/instances/{instance}/ha`: an instance's HA policy and restart priority.

use super::error::{ApiJson, ApiPath};
use super::ApiError;
use crate::app::{App, Caller};
use axum::extract::State;
use axum::Json;
use nimbus_api::{ErrorBody, SetInstanceHa};

/// Sets the HA policy and restart priority of an instance (running or not); answers them.
#[utoipa::path(put, path = "/v1/instances/{instance}/ha", tag = "instances",
    request_body = SetInstanceHa,
    params(("instance" = String, Path, description = "instance id or name")),
    responses((status = 200, body = SetInstanceHa), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub async fn set_instance(
    State(app): State<App>,
    caller: Caller,
    ApiPath(instance): ApiPath<String>,
    ApiJson(req): ApiJson<SetInstanceHa>,
) -> Result<Json<SetInstanceHa>, ApiError> {
    Ok(Json(app.set_instance_ha(&caller, &instance, &req).await?))
}
