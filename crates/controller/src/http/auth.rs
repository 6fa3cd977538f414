//! Authentication of API calls: the bearer token, the project a call acts in
//! (`?project=P`), the reader role's read-only rule, the metrics role, and throttling of
//! repeated failures (see docs/security.md).

use super::audit::AuditSlot;
use super::ApiError;
use crate::app::{App, AppError, Caller};
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header::{AUTHORIZATION, RETRY_AFTER};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use nimbus_api::ErrorCode;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

/// The token of `Authorization: Bearer <token>`, if present.
pub fn bearer(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get(AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// The TCP peer's address (absent when the router is called without a socket, in tests).
fn peer_ip(parts: &Parts) -> Option<IpAddr> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

/// The client's address: the TCP peer's, or, when the peer is one of the configured
/// reverse proxies, the nearest address in `X-Forwarded-For` that is not a trusted proxy
/// (what a client writes there itself is to the left, and never believed).
pub fn client_ip(parts: &Parts, trusted_proxies: &[IpAddr]) -> Option<IpAddr> {
    let peer = peer_ip(parts)?;
    if !trusted_proxies.contains(&peer) {
        return Some(peer);
    }
    let forwarded = parts
        .headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    for hop in forwarded.iter().rev() {
        match hop.parse::<IpAddr>() {
            Ok(ip) if trusted_proxies.contains(&ip) => continue,
            Ok(ip) => return Some(ip),
            // Garbage from the client side of the chain: the last good hop is the client.
            Err(_) => break,
        }
    }
    Some(peer)
}

/// The `project` query parameter: the project an admin acts in.
fn requested_project(parts: &Parts) -> Option<&str> {
    parts
        .uri
        .query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix("project="))
        .filter(|p| !p.is_empty())
}

fn is_read(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Authenticates the bearer token. A valid token is never refused: the throttle only
/// answers 429, instead of 401, to an address that failed too often and fails again, so a
/// flood of bad tokens from one address (or one proxy) cannot lock the operator out.
async fn authenticate(parts: &Parts, app: &App) -> Result<Caller, Response> {
    let ip = client_ip(parts, &app.config().trusted_proxies);
    let throttle = app.auth_throttle();
    let err = match app.authenticate(bearer(parts)).await {
        Ok(caller) => return Ok(caller),
        Err(e) => e,
    };
    if err.code != ErrorCode::Unauthorized {
        return Err(ApiError(err).into_response());
    }
    if let Err(wait) = throttle.check(ip, Instant::now()) {
        tracing::warn!(client = ?ip, "authentication failure from a throttled address");
        let err = AppError::new(
            ErrorCode::TooManyRequests,
            format!("too many failed authentications from this address; retry in {wait} s"),
        );
        let mut resp = ApiError(err).into_response();
        resp.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(wait));
        return Err(resp);
    }
    throttle.record_failure(ip, Instant::now());
    Err(ApiError(err).into_response())
}

impl FromRequestParts<App> for Caller {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        let caller = authenticate(parts, app).await?;
        let slot = parts.extensions.get::<AuditSlot>().cloned();
        // Recorded before the project check, so that refused attempts name their token.
        if let Some(slot) = &slot {
            slot.set(&caller);
        }
        caller
            .require_not_metrics()
            .map_err(|e| ApiError(e).into_response())?;
        let caller = app
            .act_in(caller, requested_project(parts))
            .await
            .map_err(|e| ApiError(e).into_response())?;
        if let Some(slot) = &slot {
            slot.set(&caller);
        }
        if !is_read(&parts.method) {
            caller
                .require_write()
                .map_err(|e| ApiError(e).into_response())?;
        }
        Ok(caller)
    }
}

/// Marker extractor: the caller may read `/metrics` (an admin or a metrics token).
pub struct MetricsCaller;

impl FromRequestParts<App> for MetricsCaller {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        let caller = authenticate(parts, app).await?;
        caller
            .require_metrics()
            .map_err(|e| ApiError(e).into_response())?;
        Ok(MetricsCaller)
    }
}

/// The caller is an enrolled host's agent: the identity of the client certificate the TLS
/// handshake verified, checked against revocation and the name binding. A bearer token
/// gets nothing here.
pub struct AgentCaller(pub std::sync::Arc<nimbus_pki::PeerIdentity>);

impl FromRequestParts<App> for AgentCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        let Some(super::peer::ClientCert(id)) = parts.extensions.get().cloned() else {
            tracing::warn!(peer = ?peer_ip(parts), path = %parts.uri.path(),
                "agent call refused: no host certificate");
            return Err(ApiError(AppError::new(
                ErrorCode::Unauthorized,
                "agent calls need the host's certificate (mutual TLS); enrol the host with `nimbus agent --join TOKEN`",
            )));
        };
        app.authenticate_host(&id).await?;
        Ok(AgentCaller(id))
    }
}

/// The caller is another controller of this cloud: a controller certificate of the
/// cloud's CA, verified by the TLS handshake. A bearer token gets nothing here.
pub struct PeerController;

impl FromRequestParts<App> for PeerController {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _app: &App) -> Result<Self, Self::Rejection> {
        match parts.extensions.get::<super::peer::ClientCert>() {
            Some(super::peer::ClientCert(id)) if id.role == nimbus_pki::Role::Controller => {
                Ok(PeerController)
            }
            _ => {
                tracing::warn!(peer = ?peer_ip(parts), path = %parts.uri.path(),
                    "controller call refused: no controller certificate");
                Err(ApiError(AppError::new(
                    ErrorCode::Unauthorized,
                    "only another controller of this cloud (its certificate, mutual TLS) may call this",
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(peer: &str, forwarded: Option<&str>) -> Parts {
        let mut b = axum::http::Request::builder().uri("/v1/instances");
        if let Some(f) = forwarded {
            b = b.header("x-forwarded-for", f);
        }
        let (mut parts, _) = b.body(()).expect("request").into_parts();
        let peer: SocketAddr = format!("{peer}:5000").parse().expect("addr");
        parts.extensions.insert(ConnectInfo(peer));
        parts
    }

    fn ip(s: &str) -> Option<IpAddr> {
        s.parse().ok()
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let proxy = ip("10.0.0.5").into_iter().collect::<Vec<_>>();
        // Not a proxy: whatever the client writes is ignored.
        let p = parts("203.0.113.7", Some("198.51.100.1"));
        assert_eq!(client_ip(&p, &proxy), ip("203.0.113.7"));
        assert_eq!(client_ip(&p, &[]), ip("203.0.113.7"));
        // Through the proxy: the address the proxy saw (the rightmost), not what the client
        // prepended to the header to pass for someone else.
        let p = parts("10.0.0.5", Some("198.51.100.1, 203.0.113.9"));
        assert_eq!(client_ip(&p, &proxy), ip("203.0.113.9"));
        // Chained trusted proxies are skipped; garbage ends the walk.
        let two = vec![ip("10.0.0.5").expect("ip"), ip("10.0.0.6").expect("ip")];
        let p = parts("10.0.0.5", Some("203.0.113.9, 10.0.0.6"));
        assert_eq!(client_ip(&p, &two), ip("203.0.113.9"));
        let p = parts("10.0.0.5", Some("nonsense"));
        assert_eq!(client_ip(&p, &proxy), ip("10.0.0.5"));
        let p = parts("10.0.0.5", None);
        assert_eq!(client_ip(&p, &proxy), ip("10.0.0.5"));
    }
}
