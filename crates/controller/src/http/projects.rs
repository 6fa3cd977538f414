//! `/v1/projects` and their quotas.

use super::error::{ApiJson, ApiPath, ApiQuery};
use super::paging::{page_request, Paged};
use super::ApiError;
use crate::app::{App, Caller};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use nimbus_api::{CreateProject, ErrorBody, PageParams, ProjectView, QuotaLimits, QuotaView};

/// Lists projects (admin).
#[utoipa::path(get, path = "/v1/projects", tag = "tenancy", params(PageParams),
    responses((status = 200, body = [ProjectView]), (status = 403, body = ErrorBody)))]
pub async fn list(
    State(app): State<App>,
    caller: Caller,
    ApiQuery(q): ApiQuery<PageParams>,
) -> Result<Paged<ProjectView>, ApiError> {
    let page = page_request("projects", &q)?;
    Ok(Paged::new(
        "projects",
        app.list_projects(&caller, &page).await?,
    ))
}

/// Creates a project (admin), with the default quota of new projects.
#[utoipa::path(post, path = "/v1/projects", tag = "tenancy", request_body = CreateProject,
    responses((status = 201, body = ProjectView), (status = 400, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create(
    State(app): State<App>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateProject>,
) -> Result<(StatusCode, Json<ProjectView>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(app.create_project(&caller, &req).await?),
    ))
}

/// Shows a project (admin, or a token of that project).
#[utoipa::path(get, path = "/v1/projects/{project}", tag = "tenancy",
    responses((status = 200, body = ProjectView), (status = 404, body = ErrorBody)))]
pub async fn show(
    State(app): State<App>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<ProjectView>, ApiError> {
    Ok(Json(app.get_project(&caller, &name).await?))
}

/// Deletes a project (admin); refused while it owns instances. Its tokens are revoked.
#[utoipa::path(delete, path = "/v1/projects/{project}", tag = "tenancy",
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete(
    State(app): State<App>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    app.delete_project(&caller, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A project's limits and current use (admin, or a token of that project).
#[utoipa::path(get, path = "/v1/projects/{project}/quota", tag = "tenancy",
    responses((status = 200, body = QuotaView), (status = 404, body = ErrorBody)))]
pub async fn show_quota(
    State(app): State<App>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<QuotaView>, ApiError> {
    Ok(Json(app.get_quota(&caller, &name).await?))
}

/// Replaces a project's limits (admin); `null` is unlimited.
#[utoipa::path(put, path = "/v1/projects/{project}/quota", tag = "tenancy", request_body = QuotaLimits,
    responses((status = 200, body = QuotaView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn set_quota(
    State(app): State<App>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiJson(limits): ApiJson<QuotaLimits>,
) -> Result<Json<QuotaView>, ApiError> {
    Ok(Json(app.set_quota(&caller, &name, &limits).await?))
}
