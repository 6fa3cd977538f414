//! Enrolment: how a new host gets its certificate (see docs/security.md).
//!
//! ```text
//! agent                                            controller
//!   │ GET  /v1/internal/ca  (server not yet trusted) │
//!   │◀──────────── CA certificate ───────────────────│  agent checks its SHA-256 against
//!   │                                                 │  the one the join token carries
//!   │ POST /v1/internal/enrol  (TLS checked with it)  │
//!   │   join token, host name, CSR, advertise URL ───▶│  token used once, name bound
//!   │◀──────────── host certificate ──────────────────│
//! ```

use serde::{Deserialize, Serialize};

/// Path of the CA certificate (PEM; anyone may read it).
pub const CA_PATH: &str = "/v1/internal/ca";
/// Path of the enrolment call.
pub const ENROL_PATH: &str = "/v1/internal/enrol";

/// What a host sends to enrol.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrolRequest {
    /// The join token (`nimbus host join-token`).
    pub token: String,
    /// The host's name: bound to its certificate from now on.
    pub name: String,
    /// The host's certificate signing request (PEM); its key stays on the host.
    pub csr_pem: String,
    /// The URL the controller will reach the agent at (`https://ADDR:PORT`): its address
    /// goes into the certificate.
    pub agent_url: String,
}

/// The controller's answer: the host's certificate and the CA.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrolResponse {
    pub cert_pem: String,
    pub ca_pem: String,
}
