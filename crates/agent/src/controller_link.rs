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

/// Adds the bearer token of a controller served without TLS (tests); over mutual TLS the
/// host's certificate is the credential and no token is sent.
pub fn authorize(req: reqwest::RequestBuilder, token: Option<&str>) -> reqwest::RequestBuilder {
    match token {
        Some(t) => req.bearer_auth(t),
        None => req,
    }
}
