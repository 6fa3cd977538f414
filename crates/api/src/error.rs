//! The error body every failed request returns, with stable machine-readable codes.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Stable error codes. Clients match on these, never on messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is malformed or a parameter is invalid.
    BadRequest,
    /// Missing, unknown, expired or revoked token.
    Unauthorized,
    /// The token's role may not do this.
    Forbidden,
    /// The project's quota does not allow this; the message names the limit and the use.
    QuotaExceeded,
    /// The request body is larger than the API accepts.
    PayloadTooLarge,
    /// Too many failed authentication attempts from this client; retry after the
    /// `Retry-After` header's seconds.
    TooManyRequests,
    /// No such resource.
    NotFound,
    /// The resource exists already, or is busy with another operation.
    Conflict,
    /// No host has room for the request.
    NoCapacity,
    /// A host agent or another dependency is unreachable; retry later.
    Unavailable,
    /// A bug or an unexpected failure on the server side.
    Internal,
}

impl ErrorCode {
    /// The HTTP status this code is answered with.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::QuotaExceeded => 403,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::TooManyRequests => 429,
            ErrorCode::NotFound => 404,
            ErrorCode::Conflict => 409,
            ErrorCode::NoCapacity => 409,
            ErrorCode::Unavailable => 503,
            ErrorCode::Internal => 500,
        }
    }

    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::QuotaExceeded => "quota_exceeded",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::TooManyRequests => "too_many_requests",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::NoCapacity => "no_capacity",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

/// JSON body of every error response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub code: ErrorCode,
    /// What went wrong and, where possible, what to do about it.
    pub message: String,
}
