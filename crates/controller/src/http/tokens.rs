//! `/v1/tokens` (admin).

use super::error::{ApiJson, ApiPath, ApiQuery};
use super::paging::{page_request, Paged};
use super::ApiError;
use crate::app::{App, Caller};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use nimbus_api::{CreateToken, CreatedToken, ErrorBody, PageParams, TokenView};

/// Lists tokens (never their secrets): every project's, or `?project=P`'s.
#[utoipa::path(get, path = "/v1/tokens", tag = "tenancy",
    params(("project" = Option<String>, Query, description = "only this project's tokens"), PageParams),
    responses((status = 200, body = [TokenView]), (status = 403, body = ErrorBody)))]
pub async fn list(
    State(app): State<App>,
    caller: Caller,
    ApiQuery(q): ApiQuery<PageParams>,
) -> Result<Paged<TokenView>, ApiError> {
    let page = page_request("tokens", &q)?;
    Ok(Paged::new("tokens", app.list_tokens(&caller, &page).await?))
}

/// Creates a token in the project the call acts in (`?project=P`, default the caller's);
/// the answer is the only place its secret appears.
#[utoipa::path(post, path = "/v1/tokens", tag = "tenancy", request_body = CreateToken,
    params(("project" = Option<String>, Query, description = "project of the new token")),
    responses((status = 201, body = CreatedToken), (status = 400, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn create(
    State(app): State<App>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateToken>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(app.create_token(&caller, &req).await?),
    ))
}

/// Revokes a token; it is refused from the next request on.
#[utoipa::path(delete, path = "/v1/tokens/{token}", tag = "tenancy",
    responses((status = 200, body = TokenView), (status = 404, body = ErrorBody)))]
pub async fn revoke(
    State(app): State<App>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<TokenView>, ApiError> {
    Ok(Json(app.revoke_token(&caller, &id).await?))
}
