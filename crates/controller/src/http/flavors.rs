//! `/v1/flavors`.

use super::error::{ApiJson, ApiPath, ApiQuery};
use super::paging::{page_request, Paged};
use super::ApiError;
use crate::app::{App, Caller};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use nimbus_api::{CreateFlavor, ErrorBody, FlavorView, PageParams};

/// Lists flavors, smallest first.
#[utoipa::path(get, path = "/v1/flavors", tag = "flavors", params(PageParams), responses((status = 200, body = [FlavorView])))]
pub async fn list(
    State(app): State<App>,
    _caller: Caller,
    ApiQuery(q): ApiQuery<PageParams>,
) -> Result<Paged<FlavorView>, ApiError> {
    let page = page_request("flavors", &q)?;
    Ok(Paged::new("flavors", app.list_flavors(&page).await?))
}

/// Creates a flavor (admin).
#[utoipa::path(post, path = "/v1/flavors", tag = "flavors", request_body = CreateFlavor,
    responses((status = 201, body = FlavorView), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create(
    State(app): State<App>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateFlavor>,
) -> Result<(StatusCode, Json<FlavorView>), ApiError> {
    caller.require_admin()?;
    Ok((StatusCode::CREATED, Json(app.create_flavor(&req).await?)))
}

/// Shows a flavor.
#[utoipa::path(get, path = "/v1/flavors/{flavor}", tag = "flavors",
    responses((status = 200, body = FlavorView), (status = 404, body = ErrorBody)))]
pub async fn show(
    State(app): State<App>,
    _caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<FlavorView>, ApiError> {
    Ok(Json(app.get_flavor(&name).await?))
}

/// Deletes a flavor (admin); existing instances keep their sizes.
#[utoipa::path(delete, path = "/v1/flavors/{flavor}", tag = "flavors",
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(app): State<App>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    caller.require_admin()?;
    app.delete_flavor(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}
