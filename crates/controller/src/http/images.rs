//! `/v1/images`.

use super::error::{ApiJson, ApiPath};
use super::ApiError;
use crate::app::{App, Caller};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use nimbus_api::{ErrorBody, ImageView, ImportImage};

/// Lists images.
#[utoipa::path(get, path = "/v1/images", tag = "images", responses((status = 200, body = [ImageView])))]
pub async fn list(
    State(app): State<App>,
    _caller: Caller,
) -> Result<Json<Vec<ImageView>>, ApiError> {
    Ok(Json(app.list_images().await?))
}

/// Registers an image from files every host can read (admin).
#[utoipa::path(post, path = "/v1/images", tag = "images", request_body = ImportImage,
    responses((status = 201, body = ImageView), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn import(
    State(app): State<App>,
    caller: Caller,
    ApiJson(req): ApiJson<ImportImage>,
) -> Result<(StatusCode, Json<ImageView>), ApiError> {
    caller.require_admin()?;
    Ok((StatusCode::CREATED, Json(app.import_image(&req).await?)))
}

/// Shows an image.
#[utoipa::path(get, path = "/v1/images/{image}", tag = "images",
    responses((status = 200, body = ImageView), (status = 404, body = ErrorBody)))]
pub async fn show(
    State(app): State<App>,
    _caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<ImageView>, ApiError> {
    Ok(Json(app.get_image(&name).await?))
}

/// Unregisters an image (admin); refused while instances use it.
#[utoipa::path(delete, path = "/v1/images/{image}", tag = "images",
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete(
    State(app): State<App>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    caller.require_admin()?;
    app.delete_image(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}
