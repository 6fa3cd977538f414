//! Errors as HTTP responses: one JSON body with a stable code, logged once here.

use crate::app::AppError;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use nimbus_api::{ErrorBody, ErrorCode};

/// An error answered to an API client.
#[derive(Debug)]
pub struct ApiError(pub AppError);

impl From<AppError> for ApiError {
    fn from(e: AppError) -> Self {
        ApiError(e)
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError(AppError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "the request body is larger than {} KiB",
                    super::MAX_BODY_BYTES / 1024
                ),
            ));
        }
        ApiError(AppError::bad_request(format!(
            "invalid JSON body: {}",
            r.body_text()
        )))
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError(AppError::bad_request(r.body_text()))
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError(AppError::bad_request(r.body_text()))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::error!(code = self.0.code.as_str(), message = %self.0.message, "request failed");
        } else {
            tracing::debug!(code = self.0.code.as_str(), message = %self.0.message, "request refused");
        }
        let body = ErrorBody {
            code: self.0.code,
            message: self.0.message,
        };
        (status, Json(body)).into_response()
    }
}

/// JSON body extractor that answers malformed input with the API's own error body.
#[derive(axum::extract::FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

/// Path extractor with the API's error body.
#[derive(axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// Query extractor with the API's error body.
#[derive(axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// Unknown routes.
pub async fn not_found() -> ApiError {
    ApiError(AppError::new(
        ErrorCode::NotFound,
        "no such route; the API is described at /v1/openapi.json",
    ))
}

/// A handler panicked: answer the usual JSON body, never the panic's text or location (the
/// log has them).
pub fn panicked(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let what = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)");
    tracing::error!(panic = %what, "request handler panicked");
    ApiError(AppError::internal(
        "the controller hit a bug answering this request; its log has the details",
    ))
    .into_response()
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn a_panic_answers_json_without_its_text() {
        let resp = super::panicked(Box::new(String::from("index out of bounds at /src/x.rs:3")));
        assert_eq!(resp.status(), 500);
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        let body: nimbus_api::ErrorBody = serde_json::from_slice(&bytes).expect("JSON body");
        assert_eq!(body.code, nimbus_api::ErrorCode::Internal);
        assert!(!body.message.contains("x.rs") && !body.message.contains("bounds"));
    }
}
