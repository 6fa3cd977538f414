//! `/v1/keypairs`.

use super::error::{ApiJson, ApiPath, ApiQuery};
use super::paging::{page_request, Paged};
use super::ApiError;
use crate::app::{App, Caller};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use nimbus_api::{CreateKeypair, CreatedKeypair, ErrorBody, KeypairView, PageParams};

/// Imports an SSH public key (`public_key`), or creates an Ed25519 keypair and answers its
/// private key once (it is not stored anywhere).
#[utoipa::path(post, path = "/v1/keypairs", tag = "keypairs", request_body = CreateKeypair,
    responses((status = 201, body = CreatedKeypair), (status = 400, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create(
    State(app): State<App>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateKeypair>,
) -> Result<(StatusCode, Json<CreatedKeypair>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(app.create_keypair(&caller, &req).await?),
    ))
}

/// Lists the project's keypairs.
#[utoipa::path(get, path = "/v1/keypairs", tag = "keypairs", params(PageParams),
    responses((status = 200, body = [KeypairView])))]
pub async fn list(
    State(app): State<App>,
    caller: Caller,
    ApiQuery(q): ApiQuery<PageParams>,
) -> Result<Paged<KeypairView>, ApiError> {
    let page = page_request("keypairs", &q)?;
    Ok(Paged::new(
        "keypairs",
        app.list_keypairs(&caller, &page).await?,
    ))
}

/// Shows a keypair.
#[utoipa::path(get, path = "/v1/keypairs/{keypair}", tag = "keypairs",
    params(("keypair" = String, Path, description = "keypair name")),
    responses((status = 200, body = KeypairView), (status = 404, body = ErrorBody)))]
pub async fn show(
    State(app): State<App>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<KeypairView>, ApiError> {
    Ok(Json(app.get_keypair(&caller, &name).await?))
}

/// Deletes a keypair (instances created with it keep their key).
#[utoipa::path(delete, path = "/v1/keypairs/{keypair}", tag = "keypairs",
    params(("keypair" = String, Path, description = "keypair name")),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(app): State<App>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    app.delete_keypair(&caller, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}
