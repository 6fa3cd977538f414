//! The agent's one error type, with stable codes mapped to HTTP statuses in one place.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use nimbus_agent_api::AgentErrorBody;
use std::path::PathBuf;
use uuid::Uuid;

/// Everything an agent operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("missing or wrong bearer token")]
    Unauthorized,
    #[error("VM {0} is not defined on this host")]
    NotFound(Uuid),
    #[error("no such agent route")]
    NoRoute,
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
    #[error("image file {path} does not exist")]
    ImageMissing { path: PathBuf },
    /// An uploaded image could not be fetched or verified.
    #[error("{0}")]
    ImageUnavailable(String),
    /// QEMU failed; the message is QEMU's own explanation when there is one.
    #[error("{0}")]
    QemuFailed(String),
    #[error("{0}")]
    Timeout(String),
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("disk image operation failed")]
    Img(#[from] nimbus_qemu::img::ImgError),
    #[error("QMP command failed")]
    Qmp(#[from] nimbus_qemu::QmpError),
    #[error("host networking failed")]
    Network(#[from] crate::network::NetError),
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Unauthorized => "unauthorized",
            Error::NotFound(_) | Error::NoRoute => "not_found",
            Error::BadRequest(_) => "bad_request",
            Error::Conflict(_) => "conflict",
            Error::ImageMissing { .. } => "image_missing",
            Error::ImageUnavailable(_) => "image_unavailable",
            Error::QemuFailed(_) | Error::Qmp(_) => "qemu_failed",
            Error::Timeout(_) => "timeout",
            Error::Network(_) => "network_failed",
            Error::Io { .. } | Error::Img(_) | Error::Internal(_) => "internal",
        }
    }

    /// HTTP status of the code.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::Unauthorized => StatusCode::UNAUTHORIZED,
            Error::NotFound(_) | Error::NoRoute => StatusCode::NOT_FOUND,
            Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::ImageMissing { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Error::ImageUnavailable(_) => StatusCode::BAD_GATEWAY,
            Error::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Error::QemuFailed(_)
            | Error::Qmp(_)
            | Error::Network(_)
            | Error::Io { .. }
            | Error::Img(_)
            | Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The message with every cause, `outer: inner: innermost`.
    pub fn chain(&self) -> String {
        error_chain(self)
    }

    /// An I/O error with what was being done to which path.
    pub fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io {
            action,
            path,
            source,
        }
    }
}

/// A damaged pack is refused as a damaged chunk file is (a conflict); the rest is internal.
impl From<nimbus_packs::PackError> for Error {
    fn from(e: nimbus_packs::PackError) -> Self {
        match e {
            nimbus_packs::PackError::Damaged(m) => Error::Conflict(m),
            nimbus_packs::PackError::Io {
                action,
                path,
                source,
            } => Error::Io {
                action,
                path,
                source,
            },
            nimbus_packs::PackError::Internal(m) => Error::Internal(m),
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = AgentErrorBody {
            code: self.code().to_string(),
            message: self.chain(),
        };
        if status.is_server_error() {
            tracing::warn!(code = body.code, error = body.message, "request failed");
        } else {
            tracing::debug!(code = body.code, error = body.message, "request refused");
        }
        (status, axum::Json(body)).into_response()
    }
}

/// An error and all its causes, `outer: inner: innermost`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

/// Result of agent operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_statuses_are_stable() {
        let id = Uuid::nil();
        assert_eq!(Error::NotFound(id).code(), "not_found");
        assert_eq!(Error::NotFound(id).status(), StatusCode::NOT_FOUND);
        assert_eq!(Error::Conflict("x".into()).status(), StatusCode::CONFLICT);
        assert_eq!(
            Error::Timeout("x".into()).status(),
            StatusCode::GATEWAY_TIMEOUT
        );
        let missing = Error::ImageMissing { path: "/k".into() };
        assert_eq!(missing.code(), "image_missing");
        let io = Error::io("read", "/a/b")(std::io::Error::other("boom"));
        assert_eq!(io.code(), "internal");
        assert_eq!(io.chain(), "cannot read /a/b: boom");
        let damaged = Error::from(nimbus_packs::PackError::Damaged("chunk damaged".into()));
        assert_eq!(damaged.code(), "conflict");
        assert_eq!(damaged.status(), StatusCode::CONFLICT);
    }
}
