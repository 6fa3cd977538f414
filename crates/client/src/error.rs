//! Client errors.

use nimbus_api::{ErrorBody, ErrorCode};

/// What an API call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the nimbus API at {api}: {source} (is `nimbus up` running? set NIMBUS_API or --api, and NIMBUS_CA_CERT or --ca-cert to the cloud's CA certificate)")]
    Transport {
        api: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{}", .body.message)]
    Api { status: u16, body: ErrorBody },
    #[error("unexpected response from the API: {0}")]
    Decode(String),
    #[error("{what} did not finish within {secs} s")]
    Timeout { what: String, secs: u64 },
    #[error("bad CA certificate: {0}")]
    CaCert(#[source] reqwest::Error),
    #[error("cannot read {path}: {source}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl ClientError {
    /// The API's error code, if the API answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api { body, .. } => Some(body.code),
            _ => None,
        }
    }

    /// The HTTP status, if the API answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}
