//! `/v1/networks`: the project's private networks.

use super::error::{ApiJson, ApiPath, ApiQuery};
use super::paging::{page_request, Paged};
use super::ApiError;
use crate::app::{App, Caller};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use nimbus_api::{CreateNetwork, ErrorBody, NetworkView, PageParams};

/// Lists the project's networks.
#[utoipa::path(get, path = "/v1/networks", tag = "networks", params(PageParams),
    responses((status = 200, body = [NetworkView]), (status = 401, body = ErrorBody)))]
pub async fn list(
    State(app): State<App>,
    caller: Caller,
    ApiQuery(q): ApiQuery<PageParams>,
) -> Result<Paged<NetworkView>, ApiError> {
    let page = page_request("networks", &q)?;
    Ok(Paged::new(
        "networks",
        app.list_networks(&caller, &page).await?,
    ))
}

/// Creates a network: a private CIDR not overlapping another network of the project (other
/// projects' networks may overlap); it gets its own segment id (VNI).
#[utoipa::path(post, path = "/v1/networks", tag = "networks", request_body = CreateNetwork,
    responses((status = 201, body = NetworkView), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
pub async fn create(
    State(app): State<App>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateNetwork>,
) -> Result<(StatusCode, Json<NetworkView>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(app.create_network(&caller, &req).await?),
    ))
}

/// Shows a network.
#[utoipa::path(get, path = "/v1/networks/{network}", tag = "networks",
    params(("network" = String, Path, description = "network name")),
    responses((status = 200, body = NetworkView), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub async fn show(
    State(app): State<App>,
    caller: Caller,
    ApiPath(network): ApiPath<String>,
) -> Result<Json<NetworkView>, ApiError> {
    Ok(Json(app.find_network(&caller, &network).await?.view()))
}

/// Deletes a network no instance is on (`default` stays).
#[utoipa::path(delete, path = "/v1/networks/{network}", tag = "networks",
    params(("network" = String, Path, description = "network name")),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
pub async fn delete(
    State(app): State<App>,
    caller: Caller,
    ApiPath(network): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    app.delete_network(&caller, &network).await?;
    Ok(StatusCode::NO_CONTENT)
}
