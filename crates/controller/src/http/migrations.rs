//! Live migration and host drain.

use super::error::{ApiJson, ApiPath};
use super::ApiError;
use crate::app::{App, Caller};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use nimbus_api::{ErrorBody, MigrateInstance, MigrationView, OperationView};

/// Live-migrates a running instance to another host (admin: tenants do not pick hardware).
#[utoipa::path(post, path = "/v1/instances/{instance}/migrate", tag = "instances", request_body = MigrateInstance,
    params(("instance" = String, Path, description = "id or name")),
    responses((status = 202, body = OperationView), (status = 409, body = ErrorBody)))]
pub async fn migrate(
    State(app): State<App>,
    caller: Caller,
    ApiPath(instance): ApiPath<String>,
    ApiJson(req): ApiJson<MigrateInstance>,
) -> Result<(StatusCode, Json<OperationView>), ApiError> {
    caller.require_admin()?;
    let op = app.migrate_instance(&caller, &instance, &req).await?;
    Ok((StatusCode::ACCEPTED, Json(op)))
}

/// Shows a migration record: source, target, and its figures (rounds, bytes, total time,
/// downtime, guest-visible pause). Its id is its operation's id.
#[utoipa::path(get, path = "/v1/migrations/{migration}", tag = "instances",
    responses((status = 200, body = MigrationView), (status = 404, body = ErrorBody)))]
pub async fn show(
    State(app): State<App>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<MigrationView>, ApiError> {
    Ok(Json(app.get_migration(&caller, &id).await?))
}

/// Drains a host: disables it and live-migrates every running instance off it (admin).
#[utoipa::path(post, path = "/v1/hosts/{host}/drain", tag = "hosts",
    responses((status = 202, body = OperationView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn drain(
    State(app): State<App>,
    caller: Caller,
    ApiPath(host): ApiPath<String>,
) -> Result<(StatusCode, Json<OperationView>), ApiError> {
    caller.require_admin()?;
    Ok((
        StatusCode::ACCEPTED,
        Json(app.drain_host(&caller, &host).await?),
    ))
}
