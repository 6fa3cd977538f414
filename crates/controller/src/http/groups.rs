//! `/v1/groups`: scaling groups.

use super::error::{ApiJson, ApiPath, ApiQuery};
use super::paging::{page_request, Paged};
use super::ApiError;
use crate::app::{App, Caller};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use nimbus_api::{CreateGroup, ErrorBody, GroupView, OperationView, PageParams, UpdateGroup};

/// Lists the project's scaling groups.
#[utoipa::path(get, path = "/v1/groups", tag = "groups", params(PageParams),
    responses((status = 200, body = [GroupView]), (status = 401, body = ErrorBody)))]
pub async fn list(
    State(app): State<App>,
    caller: Caller,
    ApiQuery(q): ApiQuery<PageParams>,
) -> Result<Paged<GroupView>, ApiError> {
    let page = page_request("groups", &q)?;
    Ok(Paged::new("groups", app.list_groups(&caller, &page).await?))
}

/// Creates a scaling group; the autoscaler creates its members.
#[utoipa::path(post, path = "/v1/groups", tag = "groups", request_body = CreateGroup,
    responses((status = 201, body = GroupView), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create(
    State(app): State<App>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateGroup>,
) -> Result<(StatusCode, Json<GroupView>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(app.create_group(&caller, &req).await?),
    ))
}

/// Shows a group: sizes, members with their CPU use, recent decisions with their reasons.
#[utoipa::path(get, path = "/v1/groups/{group}", tag = "groups",
    params(("group" = String, Path, description = "group name")),
    responses((status = 200, body = GroupView), (status = 404, body = ErrorBody)))]
pub async fn show(
    State(app): State<App>,
    caller: Caller,
    ApiPath(group): ApiPath<String>,
) -> Result<Json<GroupView>, ApiError> {
    Ok(Json(app.show_group(&caller, &group).await?))
}

/// Changes desired/min/max/target (and window, cooldown); applies at once.
#[utoipa::path(patch, path = "/v1/groups/{group}", tag = "groups", request_body = UpdateGroup,
    params(("group" = String, Path, description = "group name")),
    responses((status = 200, body = GroupView), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn update(
    State(app): State<App>,
    caller: Caller,
    ApiPath(group): ApiPath<String>,
    ApiJson(req): ApiJson<UpdateGroup>,
) -> Result<Json<GroupView>, ApiError> {
    Ok(Json(app.update_group(&caller, &group, &req).await?))
}

/// Deletes a group: its instances through their delete operations, then the group.
#[utoipa::path(delete, path = "/v1/groups/{group}", tag = "groups",
    params(("group" = String, Path, description = "group name")),
    responses((status = 202, body = OperationView), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
pub async fn delete(
    State(app): State<App>,
    caller: Caller,
    ApiPath(group): ApiPath<String>,
) -> Result<(StatusCode, Json<OperationView>), ApiError> {
    Ok((
        StatusCode::ACCEPTED,
        Json(app.delete_group(&caller, &group).await?),
    ))
}
