//! `/v1/placement-groups`: instances kept apart (spread) or together (pack).

use super::error::{ApiJson, ApiPath, ApiQuery};
use super::paging::{page_request, Paged};
use super::ApiError;
use crate::app::{App, Caller};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use nimbus_api::{CreatePlacementGroup, ErrorBody, PageParams, PlacementGroupView};

/// Lists the project's placement groups with their members.
#[utoipa::path(get, path = "/v1/placement-groups", tag = "placement-groups", params(PageParams),
    responses((status = 200, body = [PlacementGroupView]), (status = 401, body = ErrorBody)))]
pub async fn list(
    State(app): State<App>,
    caller: Caller,
    ApiQuery(q): ApiQuery<PageParams>,
) -> Result<Paged<PlacementGroupView>, ApiError> {
    let page = page_request("placement-groups", &q)?;
    Ok(Paged::new(
        "placement-groups",
        app.list_placement_groups(&caller, &page).await?,
    ))
}

/// Creates a placement group; instances join it when created (`placement_group`).
#[utoipa::path(post, path = "/v1/placement-groups", tag = "placement-groups",
    request_body = CreatePlacementGroup,
    responses((status = 201, body = PlacementGroupView), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create(
    State(app): State<App>,
    caller: Caller,
    ApiJson(req): ApiJson<CreatePlacementGroup>,
) -> Result<(StatusCode, Json<PlacementGroupView>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(app.create_placement_group(&caller, &req).await?),
    ))
}

/// Deletes a placement group that has no members.
#[utoipa::path(delete, path = "/v1/placement-groups/{group}", tag = "placement-groups",
    params(("group" = String, Path, description = "placement group name")),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
pub async fn delete(
    State(app): State<App>,
    caller: Caller,
    ApiPath(group): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    app.delete_placement_group(&caller, &group).await?;
    Ok(StatusCode::NO_CONTENT)
}
