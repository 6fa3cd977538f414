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

use chrono::{DateTime, Utc};
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
    /// The host's clock when it sent this (absent from older agents). Certificates and
    /// leases depend on both clocks agreeing: one far off is refused (see [`clock_skew`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<DateTime<Utc>>,
}

/// Most two clocks of a cloud may disagree.
pub const MAX_CLOCK_SKEW_SECS: i64 = 300;

/// Why clock `theirs` (of `whom`) cannot work with `ours`, if it is off by more than
/// [`MAX_CLOCK_SKEW_SECS`]; what to do is in the message.
pub fn clock_skew(ours: DateTime<Utc>, theirs: DateTime<Utc>, whom: &str) -> Option<String> {
    let off = (theirs - ours).num_seconds();
    if off.abs() <= MAX_CLOCK_SKEW_SECS {
        return None;
    }
    let side = if off > 0 { "ahead of" } else { "behind" };
    Some(format!(
        "the clock of {whom} is {} s {side} this one (more than {MAX_CLOCK_SKEW_SECS} s): \
         certificates and leases would fail; synchronise the hosts' time (NTP, chrony) and \
         try again",
        off.abs()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clocks_within_five_minutes_agree() {
        let now = Utc::now();
        assert_eq!(
            clock_skew(now, now + chrono::Duration::seconds(299), "h"),
            None
        );
        let ahead = clock_skew(now, now + chrono::Duration::hours(2), "host3").expect("off");
        assert!(ahead.contains("host3 is 7200 s ahead of"), "{ahead}");
        let behind = clock_skew(now, now - chrono::Duration::seconds(301), "h").expect("off");
        assert!(behind.contains("301 s behind"), "{behind}");
    }
}

/// The controller's answer: the host's certificate and the CA.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrolResponse {
    pub cert_pem: String,
    pub ca_pem: String,
}
