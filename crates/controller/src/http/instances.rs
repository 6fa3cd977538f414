//! `/v1/instances`.

use super::error::{ApiJson, ApiPath, ApiQuery};
use super::paging::{page_request, Paged};
use super::ApiError;
use crate::app::{App, Caller};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use nimbus_api::{
    ConsoleLog, CreateInstance, ErrorBody, ExecInstance, ExecOutput, InstanceView, OperationKind,
    OperationView, PageParams,
};
use serde::Deserialize;

type Accepted = (StatusCode, Json<OperationView>);

fn accepted(op: OperationView) -> Accepted {
    (StatusCode::ACCEPTED, Json(op))
}

/// Lists the project's instances, oldest first (paged).
#[utoipa::path(get, path = "/v1/instances", tag = "instances", params(PageParams),
    responses((status = 200, body = [InstanceView]), (status = 401, body = ErrorBody)))]
pub async fn list(
    State(app): State<App>,
    caller: Caller,
    ApiQuery(q): ApiQuery<PageParams>,
) -> Result<Paged<InstanceView>, ApiError> {
    let page = page_request("instances", &q)?;
    Ok(Paged::new(
        "instances",
        app.list_instances(&caller, &page).await?,
    ))
}

/// Creates an instance; answers the create operation.
#[utoipa::path(post, path = "/v1/instances", tag = "instances", request_body = CreateInstance,
    responses((status = 202, body = OperationView), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create(
    State(app): State<App>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateInstance>,
) -> Result<Accepted, ApiError> {
    Ok(accepted(app.create_instance(&caller, &req).await?))
}

/// Shows an instance (by id or name).
#[utoipa::path(get, path = "/v1/instances/{instance}", tag = "instances",
    params(("instance" = String, Path, description = "id or name")),
    responses((status = 200, body = InstanceView), (status = 404, body = ErrorBody)))]
pub async fn show(
    State(app): State<App>,
    caller: Caller,
    ApiPath(instance): ApiPath<String>,
) -> Result<Json<InstanceView>, ApiError> {
    let inst = app.find_instance(&caller, &instance).await?;
    Ok(Json(app.instance_view(&inst).await?))
}

async fn act(
    app: App,
    caller: Caller,
    instance: String,
    kind: OperationKind,
) -> Result<Accepted, ApiError> {
    Ok(accepted(
        app.act_on_instance(&caller, &instance, kind).await?,
    ))
}

/// Deletes an instance, its VM and its disk.
#[utoipa::path(delete, path = "/v1/instances/{instance}", tag = "instances",
    params(("instance" = String, Path, description = "id or name")),
    responses((status = 202, body = OperationView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete(
    State(app): State<App>,
    caller: Caller,
    ApiPath(instance): ApiPath<String>,
) -> Result<Accepted, ApiError> {
    act(app, caller, instance, OperationKind::InstanceDelete).await
}

/// Starts a stopped instance.
#[utoipa::path(post, path = "/v1/instances/{instance}/start", tag = "instances",
    params(("instance" = String, Path, description = "id or name")),
    responses((status = 202, body = OperationView), (status = 409, body = ErrorBody)))]
pub async fn start(
    State(app): State<App>,
    caller: Caller,
    ApiPath(instance): ApiPath<String>,
) -> Result<Accepted, ApiError> {
    act(app, caller, instance, OperationKind::InstanceStart).await
}

/// Stops an instance (graceful power-off, forced after a timeout).
#[utoipa::path(post, path = "/v1/instances/{instance}/stop", tag = "instances",
    params(("instance" = String, Path, description = "id or name")),
    responses((status = 202, body = OperationView), (status = 409, body = ErrorBody)))]
pub async fn stop(
    State(app): State<App>,
    caller: Caller,
    ApiPath(instance): ApiPath<String>,
) -> Result<Accepted, ApiError> {
    act(app, caller, instance, OperationKind::InstanceStop).await
}

/// Reboots an instance.
#[utoipa::path(post, path = "/v1/instances/{instance}/reboot", tag = "instances",
    params(("instance" = String, Path, description = "id or name")),
    responses((status = 202, body = OperationView), (status = 409, body = ErrorBody)))]
pub async fn reboot(
    State(app): State<App>,
    caller: Caller,
    ApiPath(instance): ApiPath<String>,
) -> Result<Accepted, ApiError> {
    act(app, caller, instance, OperationKind::InstanceReboot).await
}

/// Runs a command inside the guest (through its exec channel).
#[utoipa::path(post, path = "/v1/instances/{instance}/exec", tag = "instances", request_body = ExecInstance,
    params(("instance" = String, Path, description = "id or name")),
    responses((status = 200, body = ExecOutput), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn exec(
    State(app): State<App>,
    caller: Caller,
    ApiPath(instance): ApiPath<String>,
    ApiJson(req): ApiJson<ExecInstance>,
) -> Result<Json<ExecOutput>, ApiError> {
    Ok(Json(app.exec_in_instance(&caller, &instance, &req).await?))
}

/// Offset into the console log.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct LogQuery {
    #[serde(default)]
    pub offset: u64,
}

/// Reads the serial console log from an offset.
#[utoipa::path(get, path = "/v1/instances/{instance}/console/log", tag = "instances",
    params(("instance" = String, Path, description = "id or name"), LogQuery),
    responses((status = 200, body = ConsoleLog), (status = 404, body = ErrorBody)))]
pub async fn console_log(
    State(app): State<App>,
    caller: Caller,
    ApiPath(instance): ApiPath<String>,
    ApiQuery(q): ApiQuery<LogQuery>,
) -> Result<Json<ConsoleLog>, ApiError> {
    Ok(Json(app.console_log(&caller, &instance, q.offset).await?))
}
