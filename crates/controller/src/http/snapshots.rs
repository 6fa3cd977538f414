//! `/v1/snapshots`.

use super::error::{ApiJson, ApiPath, ApiQuery};
use super::paging::{page_request, Paged};
use super::ApiError;
use crate::app::{App, Caller};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use nimbus_api::{
    CreateSnapshot, ErrorBody, OperationView, PageParams, SnapshotFilter, SnapshotView,
};

type Accepted = (StatusCode, Json<OperationView>);

/// Takes a snapshot of an instance (with memory while it runs, or `disk_only`); answers the
/// `snapshot_create` operation. The snapshot shows `creating` until it ends.
#[utoipa::path(post, path = "/v1/snapshots", tag = "snapshots", request_body = CreateSnapshot,
    responses((status = 202, body = OperationView), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
              (status = 503, body = ErrorBody)))]
pub async fn create(
    State(app): State<App>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateSnapshot>,
) -> Result<Accepted, ApiError> {
    Ok((
        StatusCode::ACCEPTED,
        Json(app.create_snapshot(&caller, &req).await?),
    ))
}

/// Lists the project's snapshots (of one instance with `instance`), parents before their
/// children.
#[utoipa::path(get, path = "/v1/snapshots", tag = "snapshots", params(SnapshotFilter, PageParams),
    responses((status = 200, body = [SnapshotView]), (status = 404, body = ErrorBody)))]
pub async fn list(
    State(app): State<App>,
    caller: Caller,
    ApiQuery(q): ApiQuery<SnapshotFilter>,
    ApiQuery(p): ApiQuery<PageParams>,
) -> Result<Paged<SnapshotView>, ApiError> {
    let page = page_request("snapshots", &p)?;
    let snapshots = app.list_snapshots(&caller, q.instance.as_deref(), &page);
    Ok(Paged::new("snapshots", snapshots.await?))
}

/// Shows a snapshot (by id or name).
#[utoipa::path(get, path = "/v1/snapshots/{snapshot}", tag = "snapshots",
    params(("snapshot" = String, Path, description = "id or name")),
    responses((status = 200, body = SnapshotView), (status = 404, body = ErrorBody)))]
pub async fn show(
    State(app): State<App>,
    caller: Caller,
    ApiPath(snapshot): ApiPath<String>,
) -> Result<Json<SnapshotView>, ApiError> {
    Ok(Json(app.show_snapshot(&caller, &snapshot).await?))
}

/// Restores the snapshot's instance to it (memory, CPU and disk as they were); answers the
/// `snapshot_restore` operation. A snapshot that fails validation is refused and the VM is
/// left untouched.
#[utoipa::path(post, path = "/v1/snapshots/{snapshot}/restore", tag = "snapshots",
    params(("snapshot" = String, Path, description = "id or name")),
    responses((status = 202, body = OperationView), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn restore(
    State(app): State<App>,
    caller: Caller,
    ApiPath(snapshot): ApiPath<String>,
) -> Result<Accepted, ApiError> {
    Ok((
        StatusCode::ACCEPTED,
        Json(app.restore_snapshot(&caller, &snapshot).await?),
    ))
}

/// Deletes a snapshot; its children stay restorable. Answers the `snapshot_delete`
/// operation.
#[utoipa::path(delete, path = "/v1/snapshots/{snapshot}", tag = "snapshots",
    params(("snapshot" = String, Path, description = "id or name")),
    responses((status = 202, body = OperationView), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn delete(
    State(app): State<App>,
    caller: Caller,
    ApiPath(snapshot): ApiPath<String>,
) -> Result<Accepted, ApiError> {
    Ok((
        StatusCode::ACCEPTED,
        Json(app.delete_snapshot(&caller, &snapshot).await?),
    ))
}
