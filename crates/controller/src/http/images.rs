//! `/v1/images`.

use super::error::{ApiJson, ApiPath, ApiQuery};
use super::paging::{page_request, Paged};
use super::ApiError;
use crate::app::{App, Caller};
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use futures::StreamExt;
use nimbus_api::{
    CreateImageFromInstance, ErrorBody, ImageView, ImportImage, PageParams, UploadCheck,
    UploadImage,
};
use std::time::Duration;

/// Lists the images the project may boot: its own and the public ones.
#[utoipa::path(get, path = "/v1/images", tag = "images", params(PageParams), responses((status = 200, body = [ImageView])))]
pub async fn list(
    State(app): State<App>,
    caller: Caller,
    ApiQuery(q): ApiQuery<PageParams>,
) -> Result<Paged<ImageView>, ApiError> {
    let page = page_request("images", &q)?;
    Ok(Paged::new("images", app.list_images(&caller, &page).await?))
}

/// Registers an image from files every host can read (admin); it is public.
#[utoipa::path(post, path = "/v1/images", tag = "images", request_body = ImportImage,
    responses((status = 201, body = ImageView), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn import(
    State(app): State<App>,
    caller: Caller,
    ApiJson(req): ApiJson<ImportImage>,
) -> Result<(StatusCode, Json<ImageView>), ApiError> {
    caller.require_admin()?;
    Ok((StatusCode::CREATED, Json(app.import_image(&req).await?)))
}

/// Uploads an image's bytes as a stream (`Content-Length` required). The controller hashes
/// them as they arrive, refuses them unless they match `sha256` (when given), inspects the
/// format before any tool opens the file (qcow2 without backing file, data file or
/// encryption, or raw), and stores them by digest. Answers when the image is ready to boot;
/// on any failure nothing is kept.
#[utoipa::path(post, path = "/v1/images/{image}/upload", tag = "images",
    params(("image" = String, Path, description = "name of the new image"), UploadImage),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 201, body = ImageView), (status = 400, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 409, body = ErrorBody),
              (status = 413, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn upload(
    State(app): State<App>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<UploadImage>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<ImageView>), ApiError> {
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut stream = body.into_data_stream();
    match app
        .upload_image(&caller, &name, &q, length, &mut stream)
        .await
    {
        Ok(img) => Ok((StatusCode::CREATED, Json(img))),
        Err(e) => {
            discard_unread(&mut stream).await;
            Err(e.into())
        }
    }
}

/// Answers whether an upload of that many bytes as this image would be admitted now (the
/// caller may write, `public` only for admins, the name is valid and free, the size within
/// bounds, the project's image quota has room), with the error the upload would give.
/// Clients ask first: a refused upload's answer may come while they still send, and one
/// that reads it only after sending sees a broken connection. The upload checks it all
/// again.
#[utoipa::path(post, path = "/v1/images/{image}/upload-check", tag = "images",
    params(("image" = String, Path, description = "name of the new image")),
    request_body = UploadCheck,
    responses((status = 204, description = "An upload would be admitted now."),
              (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub async fn upload_check(
    State(app): State<App>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiJson(check): ApiJson<UploadCheck>,
) -> Result<StatusCode, ApiError> {
    app.check_upload(&caller, &name, &check).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Most of a refused upload's body read and dropped before the refusal is sent.
const DISCARD_LIMIT: u64 = 64 << 20;
/// Longest time spent on that.
const DISCARD_TIME: Duration = Duration::from_secs(5);

/// Reads what is left of a refused upload (a name taken, a quota, a bad format, found before
/// or while the bytes arrive), up to [`DISCARD_LIMIT`] bytes or [`DISCARD_TIME`]: a server
/// that answers while the client still sends closes the connection under it, and the user
/// sees "broken pipe" instead of the reason. Past the limit the connection is closed anyway.
async fn discard_unread(stream: &mut axum::body::BodyDataStream) {
    let drain = async {
        let mut read = 0u64;
        while let Some(Ok(chunk)) = stream.next().await {
            read += chunk.len() as u64;
            if read > DISCARD_LIMIT {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(DISCARD_TIME, drain).await;
}

/// Bakes a stopped instance's disk (its whole chain, flattened) into a new image of the
/// project; answers when the image is stored and ready to boot.
#[utoipa::path(post, path = "/v1/images/{image}/from-instance", tag = "images",
    params(("image" = String, Path, description = "name of the new image")),
    request_body = CreateImageFromInstance,
    responses((status = 201, body = ImageView), (status = 400, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn from_instance(
    State(app): State<App>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<CreateImageFromInstance>,
) -> Result<(StatusCode, Json<ImageView>), ApiError> {
    let img = app.create_image_from_instance(&caller, &name, &req).await?;
    Ok((StatusCode::CREATED, Json(img)))
}

/// Shows an image (of the project, or public).
#[utoipa::path(get, path = "/v1/images/{image}", tag = "images",
    params(("image" = String, Path, description = "image name")),
    responses((status = 200, body = ImageView), (status = 404, body = ErrorBody)))]
pub async fn show(
    State(app): State<App>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<ImageView>, ApiError> {
    Ok(Json(app.get_image(&caller, &name).await?))
}

/// Deletes an image of the project (an admin: any); refused while instances use it. An
/// uploaded image's bytes are removed when no image shares them.
#[utoipa::path(delete, path = "/v1/images/{image}", tag = "images",
    params(("image" = String, Path, description = "image name")),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
pub async fn delete(
    State(app): State<App>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    app.delete_image(&caller, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}
