//! The one error type of the application layer, mapped to HTTP in `http/error.rs`.

use nimbus_api::ErrorCode;
use nimbus_store::StoreError;

/// An error with a stable code and a message for the user.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct AppError {
    pub code: ErrorCode,
    pub message: String,
}

impl AppError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Conflict, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { .. } => AppError::not_found(e.to_string()),
            StoreError::Conflict(m) => AppError::conflict(m),
            StoreError::QuotaExceeded(q) => AppError::new(ErrorCode::QuotaExceeded, q.to_string()),
            other => {
                tracing::error!(error = %other, "store failure");
                AppError::internal("the controller's database failed; see the controller log")
            }
        }
    }
}

impl From<nimbus_agent_api::AgentError> for AppError {
    fn from(e: nimbus_agent_api::AgentError) -> Self {
        use nimbus_agent_api::AgentError as E;
        match &e {
            E::Unreachable { .. } => AppError::unavailable(e.to_string()),
            E::Api { status: 404, .. } => AppError::not_found(e.to_string()),
            E::Api { status: 409, .. } => AppError::conflict(e.to_string()),
            E::Api { status: 504, .. } => AppError::unavailable(e.to_string()),
            E::Api { status, .. } if *status < 500 => AppError::bad_request(e.to_string()),
            _ => AppError::unavailable(e.to_string()),
        }
    }
}
