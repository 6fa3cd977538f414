//! HTTP clients for the agent's calls to the controller (registration, usage, image
//! fetches): they check the controller's certificate against the cloud's CA only, and
//! present the host's certificate (see docs/security.md).

use nimbus_pki::rustls::ClientConfig;

/// A client from `builder` (timeouts) speaking TLS with `tls` when given (plain HTTP is
/// for in-process tests only).
pub fn client(
    builder: reqwest::ClientBuilder,
    tls: Option<&ClientConfig>,
) -> reqwest::Result<reqwest::Client> {
    match tls {
        Some(tls) => builder.use_preconfigured_tls(tls.clone()).build(),
        None => builder.build(),
    }
}
