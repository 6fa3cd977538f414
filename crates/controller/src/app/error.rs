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
            StoreError::BadPageKey => AppError::bad_request(e.to_string()),
            StoreError::QuotaExceeded(q) => AppError::new(ErrorCode::QuotaExceeded, q.to_string()),
            e @ StoreError::NoRoom { .. } => AppError::new(ErrorCode::NoCapacity, e.to_string()),
            // A background task's write after its lease moved: expected, not a failure.
            e @ StoreError::TaskLeaseLost { .. } => AppError::conflict(e.to_string()),
            other => {
                tracing::error!(error = %other, "store failure");
                AppError::internal("the controller's database failed; see the controller log")
            }
        }
    }
}

impl From<nimbus_agent_api::AgentError> for AppError {
    /// Answers what the user can act on; the agent's address and any file path stay in the
    /// controller log (error bodies never carry internal paths or addresses).
    fn from(e: nimbus_agent_api::AgentError) -> Self {
        use nimbus_agent_api::AgentError as E;
        tracing::warn!(error = %e, "agent call failed");
        match &e {
            E::Unreachable { .. } => AppError::unavailable(
                "the instance's host does not answer; retry later (the controller log has details)",
            ),
            E::Api {
                status, message, ..
            } => {
                let message = format!("the host refused: {}", redact_paths(message));
                match status {
                    404 => AppError::not_found(message),
                    409 => AppError::conflict(message),
                    s if *s < 500 => AppError::bad_request(message),
                    _ => AppError::unavailable(message),
                }
            }
            E::Decode(_) => AppError::unavailable(
                "the instance's host sent an unreadable answer; see the controller log",
            ),
        }
    }
}

/// Replaces absolute file paths in a message by `<path>`.
pub fn redact_paths(message: &str) -> String {
    message
        .split(' ')
        .map(|word| {
            let bare = word.trim_matches(|c: char| "\"'`()[]{},:;".contains(c));
            if bare.starts_with('/') && bare.len() > 1 {
                word.replace(bare, "<path>")
            } else {
                word.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::redact_paths;

    #[test]
    fn paths_are_redacted_and_the_rest_kept() {
        assert_eq!(
            redact_paths("cannot open \"/var/lib/nimbus/hosts/h1/vms/x/disk.qcow2\": No such file"),
            "cannot open \"<path>\": No such file"
        );
        assert_eq!(
            redact_paths("vm is not running / stopped"),
            "vm is not running / stopped"
        );
    }
}
