//! `/v1/secgroups`: the project's security groups and their rules; and
//! `/v1/instances/{instance}/secgroups`: an instance's groups.

use super::error::{ApiJson, ApiPath, ApiQuery};
use super::paging::{page_request, Paged};
use super::ApiError;
use crate::app::{App, Caller};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use nimbus_api::{
    CreateSecurityGroup, CreateSecurityRule, ErrorBody, PageParams, SecurityGroupView,
    SecurityRuleView, SetSecurityGroups,
};

/// Lists the project's security groups with their rules.
#[utoipa::path(get, path = "/v1/secgroups", tag = "secgroups", params(PageParams),
    responses((status = 200, body = [SecurityGroupView]), (status = 401, body = ErrorBody)))]
pub async fn list(
    State(app): State<App>,
    caller: Caller,
    ApiQuery(q): ApiQuery<PageParams>,
) -> Result<Paged<SecurityGroupView>, ApiError> {
    let page = page_request("secgroups", &q)?;
    Ok(Paged::new(
        "secgroups",
        app.list_secgroups(&caller, &page).await?,
    ))
}

/// Creates a security group: no inbound, all outbound until rules are added.
#[utoipa::path(post, path = "/v1/secgroups", tag = "secgroups", request_body = CreateSecurityGroup,
    responses((status = 201, body = SecurityGroupView), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
pub async fn create(
    State(app): State<App>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateSecurityGroup>,
) -> Result<(StatusCode, Json<SecurityGroupView>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(app.create_secgroup(&caller, &req).await?),
    ))
}

/// Shows a security group with its rules.
#[utoipa::path(get, path = "/v1/secgroups/{secgroup}", tag = "secgroups",
    params(("secgroup" = String, Path, description = "security group name")),
    responses((status = 200, body = SecurityGroupView), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub async fn show(
    State(app): State<App>,
    caller: Caller,
    ApiPath(secgroup): ApiPath<String>,
) -> Result<Json<SecurityGroupView>, ApiError> {
    Ok(Json(app.find_secgroup(&caller, &secgroup).await?))
}

/// Deletes a security group no instance is in and no other group's rule names (`default`
/// stays).
#[utoipa::path(delete, path = "/v1/secgroups/{secgroup}", tag = "secgroups",
    params(("secgroup" = String, Path, description = "security group name")),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
pub async fn delete(
    State(app): State<App>,
    caller: Caller,
    ApiPath(secgroup): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    app.delete_secgroup(&caller, &secgroup).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Adds an allow rule: a protocol, optional ports (tcp/udp), and one remote (a CIDR, or a
/// group of the same project: its members' addresses).
#[utoipa::path(post, path = "/v1/secgroups/{secgroup}/rules", tag = "secgroups",
    request_body = CreateSecurityRule,
    params(("secgroup" = String, Path, description = "security group name")),
    responses((status = 201, body = SecurityRuleView), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn add_rule(
    State(app): State<App>,
    caller: Caller,
    ApiPath(secgroup): ApiPath<String>,
    ApiJson(req): ApiJson<CreateSecurityRule>,
) -> Result<(StatusCode, Json<SecurityRuleView>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(app.add_secgroup_rule(&caller, &secgroup, &req).await?),
    ))
}

/// Deletes a rule: new connections it allowed are refused at once, tracked ones go on.
#[utoipa::path(delete, path = "/v1/secgroups/{secgroup}/rules/{rule}", tag = "secgroups",
    params(("secgroup" = String, Path, description = "security group name"),
           ("rule" = u64, Path, description = "rule id")),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_rule(
    State(app): State<App>,
    caller: Caller,
    ApiPath((secgroup, rule)): ApiPath<(String, u64)>,
) -> Result<StatusCode, ApiError> {
    app.delete_secgroup_rule(&caller, &secgroup, rule).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Sets the security groups of an instance (running or not); answers them.
#[utoipa::path(put, path = "/v1/instances/{instance}/secgroups", tag = "secgroups",
    request_body = SetSecurityGroups,
    params(("instance" = String, Path, description = "instance id or name")),
    responses((status = 200, body = SetSecurityGroups), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub async fn set_instance(
    State(app): State<App>,
    caller: Caller,
    ApiPath(instance): ApiPath<String>,
    ApiJson(req): ApiJson<SetSecurityGroups>,
) -> Result<Json<SetSecurityGroups>, ApiError> {
    let secgroups = app.set_instance_secgroups(&caller, &instance, &req).await?;
    Ok(Json(SetSecurityGroups { secgroups }))
}
