//! What a pack operation can fail with. Users map [`PackError::Damaged`] to their own
//! "conflict" (the data on disk is not what it claims to be) and the rest to internal errors.

use std::path::PathBuf;

/// Everything a pack operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    /// A pack or chunk is damaged, missing or of another format: refused, never served.
    #[error("{0}")]
    Damaged(String),
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Internal(String),
}

impl PackError {
    /// An I/O error with what was being done to which path.
    pub fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> PackError {
        let path = path.into();
        move |source| PackError::Io {
            action,
            path,
            source,
        }
    }
}

/// Result of pack operations.
pub type Result<T, E = PackError> = std::result::Result<T, E>;
