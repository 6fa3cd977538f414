//! The EC2-format metadata API of one network, IMDSv2 only:
//!
//! ```text
//! PUT /latest/api/token          X-aws-ec2-metadata-token-ttl-seconds: 1..21600 → token
//! GET /<version>/meta-data/      (every GET: X-aws-ec2-metadata-token: <token>, else 401)
//!     .../instance-id | hostname | local-hostname | local-ipv4 | public-ipv4
//!     .../public-keys/ → 0=key-0;  public-keys/0/ → openssh-key;  public-keys/0/openssh-key
//! GET /<version>/user-data
//! ```
//! `<version>` is `latest` or a dated one (`2009-04-04`, ...), all answered alike. The caller
//! is the instance whose port on this network has the request's source address (port
//! security pins it to that port: see docs/cloud-init.md); any other source gets 403.
//!
//! nimbus's own path, the readiness report the seed's vendor-data makes the guest send once
//! cloud-init has finished, each boot (see [`crate::instance::seed`]):
//! ```text
//! POST /nimbus/v1/ready          X-aws-ec2-metadata-token: <token>; body: cloud-init's
//!                                status, at most 1 KiB (logged) → 204; again within 2 s → 429
//! ```
//! It marks only the calling instance ready: no field of the body names an instance.

use super::registry::{Instance, Registry, ReportRefused};
use super::token::{Tokens, MAX_TTL_SECS, MIN_TTL_SECS};
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";
pub const TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
const TOKEN_PATH: &str = "/latest/api/token";
/// Where the guest reports that cloud-init has finished.
pub const READY_PATH: &str = "/nimbus/v1/ready";
/// The largest request body taken (only the readiness report has one).
pub const MAX_BODY_BYTES: usize = 1024;

/// The server of one network (`vni`) on this host.
#[derive(Debug, Clone)]
pub struct Service {
    pub vni: u32,
    pub registry: Arc<Registry>,
    pub tokens: Tokens,
}

/// The metadata API: one handler, since every path needs the same identification first.
pub fn router(service: Service) -> axum::Router {
    axum::Router::new().fallback(handle).with_state(service)
}

async fn handle(
    State(svc): State<Service>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY_BYTES).await else {
        return text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a request body may have at most {MAX_BODY_BYTES} bytes\n"),
        );
    };
    let req = Request {
        method: &method,
        path: uri.path(),
        headers: &headers,
        body: &body,
    };
    answer(&svc, peer.ip(), &req, SystemTime::now())
}

/// What the service looks at in a request.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub headers: &'a HeaderMap,
    /// At most [`MAX_BODY_BYTES`].
    pub body: &'a [u8],
}

fn text(status: StatusCode, body: impl Into<Body>) -> Response {
    (status, [("content-type", "text/plain")], body.into()).into_response()
}

/// The answer to one request from `peer`.
pub fn answer(svc: &Service, peer: IpAddr, req: &Request, now: SystemTime) -> Response {
    let Request {
        method,
        path,
        headers,
        body,
    } = *req;
    let inst = match peer {
        IpAddr::V4(ip) => svc.registry.instance(svc.vni, ip),
        IpAddr::V6(_) => None,
    };
    let Some(inst) = inst else {
        tracing::debug!(%peer, vni = svc.vni, "metadata request from no instance of this host");
        return text(StatusCode::FORBIDDEN, "no instance has this address here\n");
    };
    if path == TOKEN_PATH {
        return if method == Method::PUT {
            issue(svc, &inst, headers, now)
        } else {
            text(StatusCode::METHOD_NOT_ALLOWED, "PUT a token request\n")
        };
    }
    let reporting = path == READY_PATH;
    let allowed = if reporting {
        method == Method::POST
    } else {
        method == Method::GET || method == Method::HEAD
    };
    if !allowed {
        let only = if reporting {
            "only POST\n"
        } else {
            "only GET\n"
        };
        return text(StatusCode::METHOD_NOT_ALLOWED, only);
    }
    let token = headers.get(TOKEN_HEADER).and_then(|v| v.to_str().ok());
    if token
        .and_then(|t| svc.tokens.check(t, inst.id, now))
        .is_none()
    {
        return text(
            StatusCode::UNAUTHORIZED,
            "a valid X-aws-ec2-metadata-token is required (PUT /latest/api/token)\n",
        );
    }
    if reporting {
        return report_ready(svc, &inst, body, now);
    }
    match lookup(&svc.registry, &inst, path) {
        Some(body) => text(StatusCode::OK, body),
        None => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// `POST /nimbus/v1/ready`: the caller's guest has finished cloud-init.
fn report_ready(svc: &Service, inst: &Instance, body: &[u8], now: SystemTime) -> Response {
    let now_ms = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    match svc.registry.report_ready(inst, now_ms) {
        Ok(()) => {
            tracing::info!(instance_id = %inst.id, status = %printable(body), "guest reported ready");
            StatusCode::NO_CONTENT.into_response()
        }
        Err(ReportRefused::TooSoon(wait_ms)) => {
            let mut resp = text(StatusCode::TOO_MANY_REQUESTS, "reported just now\n");
            let secs = wait_ms.div_ceil(1000).to_string();
            if let Ok(v) = secs.parse() {
                resp.headers_mut().insert("retry-after", v);
            }
            resp
        }
    }
}

/// Guest text made safe for one log line: printable ASCII, at most 200 characters.
fn printable(body: &[u8]) -> String {
    body.iter()
        .take(200)
        .map(|b| match b {
            b' '..=b'~' => char::from(*b),
            _ => ' ',
        })
        .collect::<String>()
        .trim()
        .to_string()
}

/// `PUT /latest/api/token`. As EC2, a request carrying `X-Forwarded-For` is refused: it came
/// through a proxy in the guest, which must not hand out the instance's credentials.
fn issue(svc: &Service, inst: &Instance, headers: &HeaderMap, now: SystemTime) -> Response {
    if headers.contains_key("x-forwarded-for") {
        return text(StatusCode::FORBIDDEN, "forwarded requests get no token\n");
    }
    let ttl = headers
        .get(TTL_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|t| (MIN_TTL_SECS..=MAX_TTL_SECS).contains(t));
    let Some(ttl) = ttl else {
        return text(
            StatusCode::BAD_REQUEST,
            format!("{TTL_HEADER} must be {MIN_TTL_SECS} to {MAX_TTL_SECS}\n"),
        );
    };
    let token = svc.tokens.issue(inst.id, Duration::from_secs(ttl), now);
    let mut resp = text(StatusCode::OK, token);
    if let Ok(v) = ttl.to_string().parse() {
        resp.headers_mut().insert(TTL_HEADER, v);
    }
    resp
}

/// The body at `path` (after the version) for `inst`.
fn lookup(registry: &Registry, inst: &Instance, path: &str) -> Option<Vec<u8>> {
    let path = path.strip_prefix('/').unwrap_or(path);
    if path.is_empty() {
        return Some(b"latest\n".to_vec());
    }
    let (version, rest) = path.split_once('/').unwrap_or((path, ""));
    if !is_version(version) {
        return None;
    }
    let lines = |items: Vec<String>| Some(items.join("\n").into_bytes());
    match rest.trim_end_matches('/') {
        "" => {
            let mut items = vec!["meta-data".to_string()];
            if inst.user_data.is_some() {
                items.push("user-data".into());
            }
            lines(items)
        }
        "user-data" => inst.user_data.clone(),
        "meta-data" => lines(listing(registry, inst)),
        meta => meta_data(registry, inst, meta.strip_prefix("meta-data/")?),
    }
}

/// `latest`, or an EC2 API date (`YYYY-MM-DD`).
fn is_version(s: &str) -> bool {
    s == "latest"
        || (s.len() == 10
            && s.char_indices().all(|(i, c)| match i {
                4 | 7 => c == '-',
                _ => c.is_ascii_digit(),
            }))
}

/// The entries of `meta-data/` (directories end in `/`).
fn listing(registry: &Registry, inst: &Instance) -> Vec<String> {
    let mut items = vec!["hostname", "instance-id", "local-hostname"];
    if inst.local_ipv4.is_some() {
        items.push("local-ipv4");
    }
    if registry.public_ipv4(inst).is_some() {
        items.push("public-ipv4");
    }
    if !inst.public_keys.is_empty() {
        items.push("public-keys/");
    }
    items.into_iter().map(String::from).collect()
}

fn meta_data(registry: &Registry, inst: &Instance, key: &str) -> Option<Vec<u8>> {
    let value = match key {
        "instance-id" => inst.id.to_string(),
        "hostname" | "local-hostname" => inst.hostname.clone(),
        "local-ipv4" => inst.local_ipv4?.1.to_string(),
        "public-ipv4" => registry.public_ipv4(inst)?.to_string(),
        "public-keys" if !inst.public_keys.is_empty() => (0..inst.public_keys.len())
            .map(|i| format!("{i}=key-{i}"))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => return public_key(inst, key.strip_prefix("public-keys/")?),
    };
    Some(value.into_bytes())
}

/// `public-keys/N/` and `public-keys/N/openssh-key`.
fn public_key(inst: &Instance, rest: &str) -> Option<Vec<u8>> {
    let (index, leaf) = rest.split_once('/').unwrap_or((rest, ""));
    let key = inst.public_keys.get(index.parse::<usize>().ok()?)?;
    match leaf {
        "" => Some(b"openssh-key".to_vec()),
        "openssh-key" => Some(format!("{}\n", key.trim()).into_bytes()),
        _ => None,
    }
}

#[cfg(test)]
#[path = "http_tests.rs"]
mod tests;
