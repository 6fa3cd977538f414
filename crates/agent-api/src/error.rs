//! Errors of the agent API, on the wire and in the client.

use serde::{Deserialize, Serialize};

/// JSON error body of every failed agent request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentErrorBody {
    /// Stable machine-readable code, e.g. `not_found`, `qemu_failed`, `bad_request`.
    pub code: String,
    pub message: String,
}

/// What a call to an agent can fail with.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("agent at {url} is unreachable: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("agent refused the request ({code}): {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("agent sent a response that could not be read: {0}")]
    Decode(String),
}

impl AgentError {
    /// The agent answered 404 for the VM (or route).
    pub fn is_not_found(&self) -> bool {
        matches!(self, AgentError::Api { status: 404, .. })
    }

    /// The request may succeed if retried later (agent down or overloaded).
    pub fn is_transient(&self) -> bool {
        match self {
            AgentError::Unreachable { .. } => true,
            AgentError::Api { status, .. } => *status >= 502,
            AgentError::Decode(_) => false,
        }
    }
}
