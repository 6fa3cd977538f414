//! `/v1/floating-ips`: the project's floating IPs (addresses of the operator's external pool,
//! 1:1 NAT to an instance).

use super::error::{ApiJson, ApiPath, ApiQuery};
use super::paging::{page_request, Paged};
use super::ApiError;
use crate::app::{App, Caller};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use nimbus_api::{AttachFloatingIp, ErrorBody, FloatingIpView, PageParams};

/// Lists the project's floating IPs, by address (paged: `limit`, `page_token`).
#[utoipa::path(get, path = "/v1/floating-ips", tag = "floating-ips", params(PageParams),
    responses((status = 200, body = [FloatingIpView]), (status = 401, body = ErrorBody)))]
pub async fn list(
    State(app): State<App>,
    caller: Caller,
    ApiQuery(q): ApiQuery<PageParams>,
) -> Result<Paged<FloatingIpView>, ApiError> {
    let page = page_request("floating-ips", &q)?;
    Ok(Paged::new(
        "floating-ips",
        app.list_floating_ips(&caller, &page).await?,
    ))
}

/// Allocates a floating IP from the pool (within the project's `floating_ips` quota; 409 when
/// the cloud has no pool or it is exhausted).
#[utoipa::path(post, path = "/v1/floating-ips", tag = "floating-ips",
    responses((status = 201, body = FloatingIpView), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn allocate(
    State(app): State<App>,
    caller: Caller,
) -> Result<(StatusCode, Json<FloatingIpView>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(app.allocate_floating_ip(&caller).await?),
    ))
}

/// Attaches a floating IP to an instance of the project (409 when it is attached elsewhere or
/// the instance has another one).
#[utoipa::path(post, path = "/v1/floating-ips/{address}/attach", tag = "floating-ips",
    params(("address" = String, Path, description = "the floating IP")),
    request_body = AttachFloatingIp,
    responses((status = 200, body = FloatingIpView), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn attach(
    State(app): State<App>,
    caller: Caller,
    ApiPath(address): ApiPath<String>,
    ApiJson(req): ApiJson<AttachFloatingIp>,
) -> Result<Json<FloatingIpView>, ApiError> {
    Ok(Json(
        app.attach_floating_ip(&caller, &address, &req.instance)
            .await?,
    ))
}

/// Detaches a floating IP from its instance.
#[utoipa::path(post, path = "/v1/floating-ips/{address}/detach", tag = "floating-ips",
    params(("address" = String, Path, description = "the floating IP")),
    responses((status = 200, body = FloatingIpView), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn detach(
    State(app): State<App>,
    caller: Caller,
    ApiPath(address): ApiPath<String>,
) -> Result<Json<FloatingIpView>, ApiError> {
    Ok(Json(app.detach_floating_ip(&caller, &address).await?))
}

/// Releases a floating IP back to the pool (409 while attached).
#[utoipa::path(delete, path = "/v1/floating-ips/{address}", tag = "floating-ips",
    params(("address" = String, Path, description = "the floating IP")),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
pub async fn release(
    State(app): State<App>,
    caller: Caller,
    ApiPath(address): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    app.release_floating_ip(&caller, &address).await?;
    Ok(StatusCode::NO_CONTENT)
}
